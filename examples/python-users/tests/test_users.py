"""The Python users domain: commands, validation, uniqueness, event handlers, queries."""

import json

import flexcore
import pytest
from flexcore import ValidationError


def create(engine, email, **extra):
    [event] = engine.send("create_user", {"email": email, **extra})
    return event


def test_create_user_emits_user_created_with_a_normalised_email(engine):
    event = create(engine, "  Ann@Example.COM ", profile={"name": "Ann"})
    assert event["event_type"] == "user.created"
    assert event["data"]["email"] == "ann@example.com"
    assert event["data"]["profile"] == {"name": "Ann"}
    assert event["stream_id"] == f"user-{event['data']['user_id']}"
    assert event["stream_version"] == 0


@pytest.mark.parametrize(
    "email, why",
    [
        ("", "email is required"),
        ("no-at-sign", "missing '@'"),
        ("a b@example.com", "contains whitespace"),
        ("a@b@example.com", "more than one '@'"),
        ("ann@localhost", "the domain must be like 'example.com'"),
        ("ann@-bad.com", "the domain must be like 'example.com'"),
        ("x" * 65 + "@example.com", "1 to 64 characters"),
        ("a@" + "b" * 250 + ".com", "longer than 254 characters"),
    ],
)
def test_invalid_emails_are_refused(engine, email, why):
    with pytest.raises(ValidationError, match=why):
        engine.send("create_user", {"email": email})


def test_missing_email_is_a_validation_error(engine):
    with pytest.raises(ValidationError, match="email is required"):
        engine.send("create_user", {"profile": {}})


def test_profile_must_be_an_object(engine):
    with pytest.raises(ValidationError, match="profile must be an object"):
        engine.send("create_user", {"email": "a@example.com", "profile": "x"})


def test_an_email_can_belong_to_one_user_only(engine):
    create(engine, "ann@example.com")
    with pytest.raises(ValidationError, match="already in use"):
        create(engine, "ANN@example.com")


def test_a_claim_holds_before_the_event_handler_confirms_it(engine):
    # The engine has not delivered the first user's event yet: the command handler's claim
    # alone must refuse the second.
    engine.deliver = lambda event: None
    create(engine, "bob@example.com")
    with pytest.raises(ValidationError, match="already in use"):
        create(engine, "bob@example.com")


def test_change_email_sees_the_current_state(engine):
    user_id = create(engine, "cy@example.com")["data"]["user_id"]
    [changed] = engine.send("change_email", {"user_id": user_id, "email": "cy@example.org"})
    assert changed["event_type"] == "user.email_changed"
    assert changed["data"] == {
        "user_id": user_id,
        "old_email": "cy@example.com",
        "new_email": "cy@example.org",
    }
    assert changed["stream_version"] == 1
    # Same address again: nothing to append.
    assert engine.send("change_email", {"user_id": user_id, "email": "CY@example.org"}) == []
    # The old address is free again, the new one is taken.
    create(engine, "cy@example.com")
    with pytest.raises(ValidationError, match="already in use"):
        create(engine, "cy@example.org")


def test_change_email_of_an_unknown_user_is_refused(engine):
    with pytest.raises(ValidationError, match="does not exist"):
        engine.send("change_email", {"user_id": "nobody", "email": "x@example.com"})


def test_queries_answer_from_the_read_model(engine):
    ann = create(engine, "ann@example.com", profile={"name": "Ann"})["data"]["user_id"]
    create(engine, "abe@example.com")
    user = engine.ask("get_user", {"user_id": ann})
    assert user["email"] == "ann@example.com"
    assert user["profile"] == {"name": "Ann"}
    assert user["version"] == 0
    assert [u["email"] for u in engine.ask("list_users", {})["users"]] == [
        "abe@example.com",
        "ann@example.com",
    ]
    with pytest.raises(ValidationError, match="does not exist"):
        engine.ask("get_user", {"user_id": "nobody"})
    with pytest.raises(ValidationError, match="user_id is required"):
        engine.ask("get_user", {})


def test_event_handlers_are_idempotent_and_ignore_stale_events(engine):
    created = create(engine, "dee@example.com")
    user_id = created["data"]["user_id"]
    [changed] = engine.send("change_email", {"user_id": user_id, "email": "dee@example.org"})
    # Redelivery, and a replay arriving after the newer event, change nothing.
    engine.deliver(changed)
    engine.deliver(created)
    assert engine.ask("get_user", {"user_id": user_id})["email"] == "dee@example.org"
    assert engine.module.EMAILS == {"dee@example.org": user_id}


def test_welcome_messages_are_a_durable_consumer_writing_to_the_spool(engine, tmp_path, monkeypatch):
    assert engine.registry.durable["welcome"][0] == "user.created"
    assert "send_welcome" not in [f.__name__ for f in engine.registry.events.get("user.created", [])]
    spool = tmp_path / "welcome.spool"
    monkeypatch.setattr(engine.module, "WELCOME_SPOOL", str(spool))
    event = create(engine, "Bea@Example.com")
    assert flexcore._run_durable(engine.registry, "welcome", json.dumps(event)) is True
    [line] = spool.read_text().splitlines()
    assert json.loads(line) == {
        "event_id": event["event_id"],
        "to": "bea@example.com",
        "subject": "Welcome!",
    }

