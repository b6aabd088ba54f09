"""The seed's handlers and the typed Python API, run against the engine's ``flexcore`` module."""

import dataclasses
import datetime
import decimal
import enum
import json
import pathlib
import textwrap
import typing
import uuid

import pytest

from conftest import Engine, flexcore

SEED_PY = pathlib.Path(__file__).resolve().parents[1] / "seed.py"


def module(tmp_path, source):
    path = tmp_path / "handlers.py"
    path.write_text(textwrap.dedent(source))
    return path


def test_the_seed_creates_a_user_in_its_stream_and_welcomes_them(capsys):
    engine = Engine(SEED_PY)
    [stored] = engine.send("create_user", {"email": "ann@example.com"})
    assert stored["event_type"] == "user.created"
    assert stored["stream_id"] == f"user-{stored['data']['user_id']}"
    assert stored["data"]["email"] == "ann@example.com"
    assert stored["data"]["created_at"].endswith("+00:00")
    assert "welcome email to ann@example.com" in capsys.readouterr().out
    assert engine.module.SIGNUPS == [stored["data"]["user_id"]]


def test_the_seed_refuses_a_missing_or_empty_email():
    engine = Engine(SEED_PY)
    with pytest.raises(flexcore.ValidationError, match="Email required"):
        engine.send("create_user", {"email": ""})
    with pytest.raises(flexcore.ValidationError, match="email is required"):
        engine.send("create_user", {})


@pytest.mark.parametrize(
    "class_name, event_type",
    [
        ("UserCreatedEvent", "user.created"),
        ("UserEmailChanged", "user.email_changed"),
        ("HTTPRequestLogged", "http.request_logged"),
        ("Order2Shipped", "order.2_shipped"),
        ("Ping", "ping"),
    ],
)
def test_event_types_follow_the_class_name(class_name, event_type):
    assert flexcore.event_type_of(type(class_name, (), {})) == event_type


def test_a_declared_event_type_or_attribute_wins_over_the_name():
    loaded = flexcore._Registry()
    flexcore._loading = loaded
    try:
        @flexcore.FlexCore.event("account.opened")
        @dataclasses.dataclass
        class Whatever:
            n: int

        class Other:
            event_type = "account.closed"
    finally:
        flexcore._loading = None
    assert flexcore.event_type_of(Whatever) == "account.opened"
    assert flexcore.event_type_of(Other) == "account.closed"


class Colour(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Address:
    city: str


def test_marshalling_follows_the_documented_rules():
    offset = datetime.timezone(datetime.timedelta(hours=2))
    marshalled = flexcore.marshal(
        {
            "naive": datetime.datetime(2026, 1, 2, 3, 4, 5),
            "aware": datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=offset),
            "day": datetime.date(2026, 1, 2),
            "id": uuid.UUID("00000000-0000-0000-0000-000000000001"),
            "price": decimal.Decimal("12.50"),
            "colour": Colour.RED,
            "blob": b"\x00\xff",
            "tags": {"b", "a"},
            "address": Address("Oslo"),
            "pair": (1, 2),
        }
    )
    assert marshalled == {
        "naive": "2026-01-02T03:04:05+00:00",
        "aware": "2026-01-02T03:04:05+02:00",
        "day": "2026-01-02",
        "id": "00000000-0000-0000-0000-000000000001",
        "price": "12.50",
        "colour": "red",
        "blob": "AP8=",
        "tags": ["a", "b"],
        "address": {"city": "Oslo"},
        "pair": [1, 2],
    }


def test_an_unserialisable_field_names_the_handler_and_the_path(tmp_path):
    engine = Engine(
        module(
            tmp_path,
            """
            from dataclasses import dataclass
            from flexcore import FlexCore

            @dataclass
            class Inner:
                when: object

            @dataclass
            class ThingMade:
                thing_id: str
                inner: Inner

            @FlexCore.command_handler("make")
            def make_thing(cmd):
                return ThingMade(thing_id="t1", inner=Inner(when=object()))
            """,
        )
    )
    with pytest.raises(flexcore._InvalidReturn) as raised:
        engine.send("make", {})
    message = str(raised.value)
    assert "handler 'make_thing'" in message and "data.inner.when" in message, message


def test_named_tuples_events_with_metadata_and_appends(tmp_path):
    engine = Engine(
        module(
            tmp_path,
            """
            from typing import NamedTuple
            from flexcore import Append, Event, FlexCore

            class OrderPlaced(NamedTuple):
                order_id: str
                total: int

            @FlexCore.command_handler("place")
            def place(cmd):
                return [OrderPlaced(order_id="o1", total=3), Event("order.noted", {}, metadata={"source": "test"})]

            @FlexCore.command_handler("place_one")
            def place_one(cmd):
                return OrderPlaced(order_id="o3", total=5)

            @FlexCore.command_handler("place_elsewhere")
            def place_elsewhere(cmd):
                return Append("ledger-1", [OrderPlaced("o2", 4)], expected=Append.NO_STREAM)
            """,
        )
    )
    placed, noted = engine.send("place", {})
    assert (placed["event_type"], placed["stream_id"], placed["data"]) == (
        "order.placed",
        "order-o1",
        {"order_id": "o1", "total": 3},
    )
    assert noted["metadata"] == {"source": "test"}
    [one] = engine.send("place_one", {})
    assert (one["stream_id"], one["data"]) == ("order-o3", {"order_id": "o3", "total": 5})
    [elsewhere] = engine.send("place_elsewhere", {})
    assert elsewhere["stream_id"] == "ledger-1"
    decided = flexcore._run_command(engine.registry, "place_elsewhere", "{}", "[]")
    assert decided[0][:2] == ("ledger-1", "no_stream")


COMMANDS = """
from dataclasses import dataclass, field
from datetime import datetime
from typing import Optional
from flexcore import FlexCore

SEEN = []

@dataclass
class Address:
    city: str

@dataclass
class Register:
    email: str
    age: int
    born: datetime
    address: Address
    nickname: Optional[str] = None
    tags: list[str] = field(default_factory=list)

@dataclass
class UserRegistered:
    user_id: str
    email: str
    born: datetime

@FlexCore.command_handler("register")
def register(cmd: Register):
    SEEN.append(cmd)
    return UserRegistered(user_id="u1", email=cmd.email, born=cmd.born)

@FlexCore.event_handler("user.registered")
def on_registered(event: UserRegistered):
    SEEN.append(event)
"""


def test_an_annotated_command_parameter_gets_an_instance(tmp_path):
    engine = Engine(module(tmp_path, COMMANDS))
    engine.send(
        "register",
        {"email": "a@b.c", "age": 30, "born": "1990-05-01T10:00:00Z", "address": {"city": "Oslo"}},
    )
    cmd, event = engine.module.SEEN
    assert type(cmd).__name__ == "Register" and cmd.address.city == "Oslo"
    assert cmd.born == datetime.datetime(1990, 5, 1, 10, tzinfo=datetime.timezone.utc)
    assert cmd.nickname is None and cmd.tags == []
    # The event handler annotated with the event class gets one, built from the stored data.
    assert type(event).__name__ == "UserRegistered" and event.born == cmd.born


@pytest.mark.parametrize(
    "payload, message",
    [
        ({"age": 30, "born": "1990-05-01", "address": {"city": "x"}}, "email is required"),
        ({"email": "a", "age": "old", "born": "1990-05-01", "address": {"city": "x"}}, "age must be an integer"),
        ({"email": "a", "age": 3, "born": "yesterday", "address": {"city": "x"}}, "born must be an ISO-8601 date-time"),
        ({"email": "a", "age": 3, "born": "1990-05-01", "address": {}}, "address.city is required"),
        ({"email": "a", "age": 3, "born": "1990-05-01", "address": {"city": "x"}, "tags": [1]}, r"tags\[0\] must be a string"),
    ],
)
def test_a_missing_or_mistyped_command_field_is_a_validation_error(tmp_path, payload, message):
    engine = Engine(module(tmp_path, COMMANDS))
    with pytest.raises(flexcore.ValidationError, match=message):
        engine.send("register", payload)


def test_pydantic_commands_and_events_when_pydantic_is_installed(tmp_path):
    pytest.importorskip("pydantic", reason="pydantic is not installed; its support is optional")
    engine = Engine(
        module(
            tmp_path,
            """
            from pydantic import BaseModel
            from flexcore import FlexCore

            class Rename(BaseModel):
                user_id: str
                name: str

            class UserRenamed(BaseModel):
                user_id: str
                name: str

            @FlexCore.command_handler("rename")
            def rename(cmd: Rename):
                return UserRenamed(user_id=cmd.user_id, name=cmd.name.title())
            """,
        )
    )
    [stored] = engine.send("rename", {"user_id": "u7", "name": "ada"})
    assert (stored["event_type"], stored["stream_id"], stored["data"]["name"]) == ("user.renamed", "user-u7", "Ada")
    with pytest.raises(flexcore.ValidationError, match="name is required"):
        engine.send("rename", {"user_id": "u7"})


def test_handlers_read_their_context(tmp_path):
    engine = Engine(
        module(
            tmp_path,
            """
            from flexcore import FlexCore, principal

            SEEN = []

            @FlexCore.command_handler("note")
            def note(cmd):
                ctx = FlexCore.context()
                SEEN.append((ctx.correlation_id, ctx.causation_id, ctx.idempotency_key, ctx.principal.sub, principal().sub))
                return {"type": "note.taken", "data": {}}

            @FlexCore.event_handler("note.taken")
            def taken(event):
                SEEN.append(FlexCore.context().correlation_id)
            """,
        )
    )
    context = {
        "command_id": "c1",
        "correlation_id": "corr",
        "causation_id": "c1",
        "idempotency_key": "k1",
        "principal": {"sub": "ann", "roles": [], "tenant": None},
    }
    [stored] = engine.send("note", {}, context)
    assert engine.module.SEEN[0] == ("corr", "c1", "k1", "ann", "ann")
    assert flexcore.FlexCore.context() is None
    flexcore._run_event_handlers(engine.registry, json.dumps({**stored, "metadata": {"correlation_id": "corr"}}))
    assert engine.module.SEEN[-1] == "corr"


@pytest.mark.parametrize(
    "exception, kind",
    [("ValidationError", "validation"), ("ConflictError", "conflict"), ("NotFoundError", "not_found"), ("Forbidden", "forbidden")],
)
def test_refusals_carry_their_kind_message_and_code(exception, kind):
    refusal = getattr(flexcore, exception)("no", code="why")
    assert (refusal.kind, str(refusal), refusal.code) == (kind, "no", "why")
