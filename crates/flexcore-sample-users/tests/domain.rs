//! The sample domain's rules, written with the given/when/then kit.

use flexcore_domain::test_kit::AggregateTestKit;
use flexcore_domain::{DomainEvent, ErrorKind};
use flexcore_sample_users::domain::{
    Email, EmailReservation, ReservationCommand, ReservationEvent, User, UserCommand, UserEvent,
};
use serde_json::{Map, json};
use uuid::Uuid;

fn email(s: &str) -> Email {
    Email::parse(s).unwrap()
}

fn created(id: Uuid, address: &str) -> UserEvent {
    UserEvent::Created {
        user_id: id,
        email: email(address),
        profile: Map::new(),
    }
}

#[test]
fn create_user_emits_user_created() {
    let id = Uuid::now_v7();
    let mut profile = Map::new();
    profile.insert("name".into(), json!("Ann"));
    AggregateTestKit::<User>::given_no_previous_events()
        .when(&UserCommand::Create {
            user_id: id,
            email: email("Ann@Example.com"),
            profile: profile.clone(),
        })
        .then_expect_events(vec![UserEvent::Created {
            user_id: id,
            email: email("ann@example.com"),
            profile,
        }]);
}

#[test]
fn creating_an_existing_user_is_a_conflict() {
    let id = Uuid::now_v7();
    AggregateTestKit::<User>::given(vec![created(id, "a@b.io")])
        .when(&UserCommand::Create {
            user_id: id,
            email: email("a@b.io"),
            profile: Map::new(),
        })
        .then_expect_error_kind(ErrorKind::Conflict);
}

#[test]
fn change_email_emits_email_changed() {
    let id = Uuid::now_v7();
    AggregateTestKit::<User>::given(vec![created(id, "old@b.io")])
        .when(&UserCommand::ChangeEmail {
            email: email("new@b.io"),
        })
        .then_expect_events(vec![UserEvent::EmailChanged {
            user_id: id,
            old_email: email("old@b.io"),
            new_email: email("new@b.io"),
        }]);
}

#[test]
fn unchanged_email_emits_nothing() {
    let id = Uuid::now_v7();
    AggregateTestKit::<User>::given(vec![created(id, "same@b.io")])
        .when(&UserCommand::ChangeEmail {
            email: email("SAME@b.io"),
        })
        .then_expect_events(vec![]);
}

#[test]
fn change_email_of_unknown_user_is_not_found() {
    AggregateTestKit::<User>::given_no_previous_events()
        .when(&UserCommand::ChangeEmail {
            email: email("x@b.io"),
        })
        .then_expect_error_kind(ErrorKind::NotFound);
}

#[test]
fn invalid_emails_are_validation_errors() {
    for bad in [
        "", "   ", "no-at", "a@", "@b.io", "a@b", "a@@b.io", "a b@c.io", "a@-b.io", "a@b..io",
    ] {
        let err = Email::parse(bad).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Validation, "{bad:?}");
    }
    let long = format!("{}@example.com", "a".repeat(250));
    assert_eq!(
        Email::parse(&long).unwrap_err().kind(),
        ErrorKind::Validation
    );
    assert_eq!(
        Email::parse("  Ann.Lee+x@Mail.Example.COM ")
            .unwrap()
            .as_str(),
        "ann.lee+x@mail.example.com"
    );
}

#[test]
fn a_held_address_cannot_be_reserved_by_someone_else() {
    let (ann, bob) = (Uuid::now_v7(), Uuid::now_v7());
    let address = email("shared@b.io");
    let held = ReservationEvent::Reserved {
        email: address.clone(),
        user_id: ann,
    };
    AggregateTestKit::<EmailReservation>::given(vec![held.clone()])
        .when(&ReservationCommand::Reserve {
            email: address.clone(),
            user_id: bob,
        })
        .then_expect_error_kind(ErrorKind::Conflict);
    AggregateTestKit::<EmailReservation>::given(vec![held.clone()])
        .when(&ReservationCommand::Reserve {
            email: address.clone(),
            user_id: ann,
        })
        .then_expect_events(vec![]);
    let released = ReservationEvent::Released {
        email: address.clone(),
        user_id: ann,
    };
    AggregateTestKit::<EmailReservation>::given(vec![held, released])
        .when(&ReservationCommand::Reserve {
            email: address.clone(),
            user_id: bob,
        })
        .then_expect_events(vec![ReservationEvent::Reserved {
            email: address,
            user_id: bob,
        }]);
}

#[test]
fn events_round_trip_through_their_wire_form() {
    let event = created(Uuid::now_v7(), "rt@b.io");
    let new_event = event.to_new_event().unwrap();
    assert_eq!(new_event.event_type, "user.created");
    let data: serde_json::Value = new_event.data.decode().unwrap();
    assert_eq!(data["email"], "rt@b.io");
    let envelope = flexcore_domain::EventEnvelope {
        event_id: new_event.event_id,
        stream_id: flexcore_domain::StreamId::new("user-1").unwrap(),
        stream_version: 0,
        global_position: 1,
        event_type: new_event.event_type.clone(),
        schema_version: 1,
        data: new_event.data.clone(),
        metadata: Default::default(),
        recorded_at: time::OffsetDateTime::UNIX_EPOCH,
    };
    assert_eq!(UserEvent::from_envelope(&envelope).unwrap(), event);
}
