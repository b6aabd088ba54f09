"""The Python users domain: commands, validation, uniqueness, event handlers, queries."""

import json

import flexcore
import pytest
from flexcore import ConflictError, NotFoundError, ValidationError


def create(engine, email, **extra):
    """Creates a user: its ``user.created`` (the reservation's event comes with it)."""
    created, reserved = engine.send("create_user", {"email": email, **extra})
    assert reserved["event_type"] == "email.reserved"
    return created


def holder(engine, address):
    """Who holds ``address``, by its reservation stream."""
    held = None
    for event in engine.streams.get(f"email-{address}", []):
        held = event["data"]["user_id"] if event["event_type"] == "email.reserved" else None
    return held


def test_create_user_emits_user_created_with_a_normalised_email_and_reserves_it(engine):
    event, reserved = engine.send(
        "create_user", {"email": "  Ann@Example.COM ", "profile": {"name": "Ann"}}
    )
    assert event["event_type"] == "user.created"
    assert event["data"]["email"] == "ann@example.com"
    assert event["data"]["profile"] == {"name": "Ann"}
    assert event["stream_id"] == f"user-{event['data']['user_id']}"
    assert event["stream_version"] == 0
    assert reserved["stream_id"] == "email-ann@example.com"
    assert reserved["data"] == {"email": "ann@example.com", "user_id": event["data"]["user_id"]}


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
    with pytest.raises(ConflictError, match="already in use") as refused:
        create(engine, "ANN@example.com")
    assert refused.value.code == "email_taken"
    assert len(engine.streams["email-ann@example.com"]) == 1


def test_uniqueness_needs_no_read_model_or_process_memory(engine):
    # Event handlers never run, and a fresh load of the module shares nothing with the first:
    # the reservation stream alone refuses the second user.
    engine.deliver = lambda event: None
    create(engine, "bob@example.com")
    again = type(engine)(engine.module.__file__)
    again.streams, again.position, again.deliver = engine.streams, engine.position, engine.deliver
    with pytest.raises(ConflictError, match="already in use"):
        create(again, "bob@example.com")


def test_a_claim_made_between_read_and_append_wins_and_the_loser_is_re_run(engine):
    # Another server reserves the address after this command read the reservation stream:
    # this command's append fails its expectation, writes nothing, and its re-run sees the
    # address taken.
    def racing_server():
        engine.streams["email-eve@example.com"] = [
            {"event_type": "email.reserved", "data": {"email": "eve@example.com", "user_id": "other"}}
        ]

    engine.before_append = racing_server
    with pytest.raises(ConflictError, match="already in use"):
        create(engine, "eve@example.com")
    assert holder(engine, "eve@example.com") == "other"
    assert not [s for s in engine.streams if s.startswith("user-")], "no user was written"


def test_a_race_lost_on_every_attempt_ends_in_a_conflict(engine):
    # Every attempt loses its race on the reservation stream: after the engine's attempts the
    # conflict itself is the answer, and nothing of the user was written.
    def always_racing():
        engine.streams.setdefault("email-kim@example.com", []).append(
            {"event_type": "email.released", "data": {"email": "kim@example.com", "user_id": "x"}}
        )
        engine.before_append = always_racing

    engine.before_append = always_racing
    with pytest.raises(engine.WrongExpectedVersion):
        create(engine, "kim@example.com")
    assert len(engine.streams["email-kim@example.com"]) == 5, "one racing write per attempt"
    assert not [s for s in engine.streams if s.startswith("user-")]


def test_change_email_sees_the_current_state(engine):
    user_id = create(engine, "cy@example.com")["data"]["user_id"]
    changed, reserved, released = engine.send(
        "change_email", {"user_id": user_id, "email": "cy@example.org"}
    )
    assert (reserved["event_type"], reserved["stream_id"]) == ("email.reserved", "email-cy@example.org")
    assert (released["event_type"], released["stream_id"]) == ("email.released", "email-cy@example.com")
    assert changed["event_type"] == "user.email_changed"
    assert changed["data"] == {
        "user_id": user_id,
        "old_email": "cy@example.com",
        "new_email": "cy@example.org",
    }
    assert changed["stream_version"] == 1
    # Same address again: nothing to append.
    assert engine.send("change_email", {"user_id": user_id, "email": "CY@example.org"}) == []
    # The new address is reserved and the old one released, at once (no event handler).
    assert holder(engine, "cy@example.org") == user_id
    assert holder(engine, "cy@example.com") is None
    other = create(engine, "cy@example.com")["data"]["user_id"]
    assert holder(engine, "cy@example.com") == other
    with pytest.raises(ConflictError, match="already in use"):
        create(engine, "cy@example.org")
    with pytest.raises(ConflictError, match="already in use"):
        engine.send("change_email", {"user_id": other, "email": "cy@example.org"})
    assert engine.ask("get_user", {"user_id": other})["email"] == "cy@example.com"


def test_change_email_of_an_unknown_user_is_not_found(engine):
    with pytest.raises(NotFoundError, match="does not exist"):
        engine.send("change_email", {"user_id": "nobody", "email": "x@example.com"})
    assert "email-x@example.com" not in engine.streams


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
    with pytest.raises(NotFoundError, match="does not exist"):
        engine.ask("get_user", {"user_id": "nobody"})
    with pytest.raises(ValidationError, match="user_id is required"):
        engine.ask("get_user", {})


def test_event_handlers_are_idempotent_and_ignore_stale_events(engine):
    created = create(engine, "dee@example.com")
    user_id = created["data"]["user_id"]
    changed = engine.send("change_email", {"user_id": user_id, "email": "dee@example.org"})[0]
    # Redelivery, and a replay arriving after the newer event, change nothing.
    engine.deliver(changed)
    engine.deliver(created)
    assert engine.ask("get_user", {"user_id": user_id})["email"] == "dee@example.org"


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



def test_reading_a_stream_outside_a_command_handler_is_a_clear_error(engine):
    with pytest.raises(RuntimeError, match="only be called while a command handler runs"):
        flexcore.FlexCore.read_stream("email-ann@example.com")
