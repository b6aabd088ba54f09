"""Stateless command handlers (no aggregate) in every form the bridge accepts."""

import datetime
from dataclasses import dataclass
from typing import NamedTuple

from flexcore import Append, ConflictError, Event, FlexCore, Forbidden, NotFoundError, ValidationError

CONTEXTS = []  # what FlexCore.context() showed each handler
REFUSALS = {
    "validation": ValidationError,
    "conflict": ConflictError,
    "not_found": NotFoundError,
    "forbidden": Forbidden,
}


@dataclass
class UserCreatedEvent:
    user_id: str
    email: str
    created_at: datetime.datetime


@FlexCore.event("audit.noted")
class Noted(NamedTuple):
    what: str


@dataclass
class Register:
    user_id: str
    email: str
    age: int


@FlexCore.command_handler("create_user")
def create_user(cmd):
    ctx = FlexCore.context()
    CONTEXTS.append(
        {
            "command_id": ctx.command_id,
            "correlation_id": ctx.correlation_id,
            "causation_id": ctx.causation_id,
            "idempotency_key": ctx.idempotency_key,
        }
    )
    return UserCreatedEvent(
        user_id=cmd.user_id,
        email=cmd.email,
        created_at=datetime.datetime(2026, 1, 2, 3, 4, 5),
    )


@FlexCore.command_handler("note")
def note(cmd):
    # No `audit_id` field: a fresh id. Extra metadata, one key trying to override the engine's.
    return [Noted("first"), Event("audit.noted", {"what": "second"}, metadata={"source": "import", "actor": "mallory"})]


@FlexCore.command_handler("open_account")
def open_account(cmd):
    return Append(f"account-{cmd.account_id}", [Event("account.opened", {})], expected=Append.NO_STREAM)


@FlexCore.command_handler("two_streams")
def two_streams(cmd):
    return [Event("user.created", {"user_id": "a"}), Event("user.created", {"user_id": "b"})]


@FlexCore.command_handler("register")
def register(cmd: Register):
    return Event("user.registered", {"user_id": cmd.user_id, "age": cmd.age})


@FlexCore.command_handler("refuse")
def refuse(cmd):
    raise REFUSALS[cmd.kind](f"refused as {cmd.kind}", code=cmd.get("code"))


@FlexCore.command_handler("nothing")
def nothing(cmd):
    return None


@FlexCore.query_handler("contexts")
def contexts(params):
    return CONTEXTS


EVENTS_SEEN = []  # what the typed event handler below received


@FlexCore.event_handler("user.created")
def on_user_created(event: UserCreatedEvent):
    ctx = FlexCore.context()
    EVENTS_SEEN.append(
        {
            "class": type(event).__name__,
            "created_at": event.created_at.isoformat(),
            "correlation_id": ctx.correlation_id,
            "causation_id": ctx.causation_id,
            "actor": ctx.actor.sub if ctx.actor is not None else None,
        }
    )


@FlexCore.query_handler("events_seen")
def events_seen(params):
    return EVENTS_SEEN
