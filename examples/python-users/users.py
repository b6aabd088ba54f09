"""The FlexCore sample users domain, written in Python.

The same API as the built-in Rust sample: ``create_user {email, profile?}``,
``change_email {user_id, email}``, ``get_user {user_id}``, plus ``list_users {}``.

Email uniqueness works as in the Rust domain, with no process memory: every address has a
reservation stream, ``email-{address}`` (``email.reserved`` / ``email.released``). A command
reads it with ``FlexCore.read_stream`` and claims (or releases) it in the same atomic append
as the user's event, expecting the version it read. Two commands racing for one address,
through one server or several sharing a database, cannot both win: the loser's append fails
its expectation, the engine re-runs it, and the re-run sees the address taken (409).
"""

import json
import os
from dataclasses import dataclass

from flexcore import Append, ConflictError, Event, FlexCore, NotFoundError, ValidationError

MAX_EMAIL_LEN = 254

# The read model behind the queries, rebuilt from the log at every start and reload.
USERS = {}  # user_id -> {"user_id", "email", "profile", "version", "stream_id"}


@dataclass
class EmailReserved:
    """``email.reserved``: ``user_id`` now holds ``email``."""

    email: str
    user_id: str


@dataclass
class EmailReleased:
    """``email.released``: ``user_id`` gave ``email`` up."""

    email: str
    user_id: str


def parse_email(raw):
    """Normalises an address (trimmed, lower-case) or raises ValidationError; the rules of
    the Rust domain's ``Email::parse``."""
    if not isinstance(raw, str):
        raise ValidationError("email must be a string")
    address = raw.strip().lower()

    def invalid(why):
        return ValidationError(f"invalid email '{raw}': {why}")

    if not address:
        raise ValidationError("email is required")
    if len(address) > MAX_EMAIL_LEN:
        raise invalid("longer than 254 characters")
    if any(c.isspace() or not c.isprintable() for c in address):
        raise invalid("contains whitespace")
    if "@" not in address:
        raise invalid("missing '@'")
    local, domain = address.split("@", 1)
    if not 1 <= len(local) <= 64:
        raise invalid("the part before '@' must be 1 to 64 characters")
    if "@" in domain:
        raise invalid("more than one '@'")
    labels = domain.split(".")
    if len(labels) < 2 or any(
        not label
        or label.startswith("-")
        or label.endswith("-")
        or not all(c.isalnum() or c == "-" for c in label)
        for label in labels
    ):
        raise invalid("the domain must be like 'example.com'")
    return address


def read_reservation(address):
    """The reservation stream of ``address`` and the user holding it (or None)."""
    stream = FlexCore.read_stream(f"email-{address}", EmailReserved, EmailReleased)
    holder = None
    for event in stream.events:
        holder = event.user_id if isinstance(event, EmailReserved) else None
    return stream, holder


def reserve(address, user_id):
    """The Append claiming ``address`` for ``user_id``; ConflictError if someone else holds
    it. It expects the version read, so a claim made meanwhile fails the whole command."""
    stream, holder = read_reservation(address)
    if holder is not None and holder != user_id:
        raise ConflictError(f"email {address} is already in use", code="email_taken")
    events = [] if holder == user_id else [EmailReserved(email=address, user_id=user_id)]
    return Append(stream.stream_id, events)


def release(address, user_id):
    """The Append giving ``address`` up if ``user_id`` holds it (otherwise it only checks
    that the reservation did not change since it was read)."""
    stream, holder = read_reservation(address)
    events = [EmailReleased(email=address, user_id=user_id)] if holder == user_id else []
    return Append(stream.stream_id, events)


@FlexCore.aggregate("user", id_field="user_id")
class User:
    def __init__(self):
        self.user_id = None
        self.email = None
        self.profile = {}

    @FlexCore.apply("user.created")
    def created(self, event):
        self.user_id = event.data.user_id
        self.email = event.data.email
        self.profile = event.data.get("profile") or {}

    @FlexCore.apply("user.email_changed")
    def email_changed(self, event):
        self.email = event.data.new_email


@FlexCore.command_handler("create_user", aggregate=User, creates=True)
def create_user(cmd):
    email = parse_email(cmd.email)
    profile = cmd.get("profile")
    if profile is not None and not hasattr(profile, "to_dict"):
        raise ValidationError("profile must be an object")
    return [
        Event(
            "user.created",
            {
                "user_id": cmd.user_id,
                "email": email,
                "profile": profile.to_dict() if profile is not None else {},
            },
        ),
        reserve(email, cmd.user_id),
    ]


@FlexCore.command_handler("change_email", aggregate=User)
def change_email(cmd, user):
    if user.user_id is None:
        raise NotFoundError(f"user {cmd.user_id} does not exist")
    email = parse_email(cmd.email)
    if email == user.email:
        return None  # nothing changes
    return [
        Event(
            "user.email_changed",
            {"user_id": user.user_id, "old_email": user.email, "new_email": email},
        ),
        reserve(email, user.user_id),
        release(user.email, user.user_id),
    ]


@FlexCore.event_handler("user.created")
def on_user_created(event):
    # At least once, and replayed after every reload: apply each stream version once.
    user_id = event.data.user_id
    known = USERS.get(user_id)
    if known is not None and known["version"] >= event.stream_version:
        return
    profile = event.data.get("profile")
    USERS[user_id] = {
        "user_id": user_id,
        "email": event.data.email,
        "profile": profile.to_dict() if profile is not None else {},
        "version": event.stream_version,
        "stream_id": event.stream_id,
    }


@FlexCore.event_handler("user.email_changed")
def on_email_changed(event):
    user_id = event.data.user_id
    known = USERS.get(user_id)
    if known is None or known["version"] >= event.stream_version:
        return
    known["email"] = event.data.new_email
    known["version"] = event.stream_version


@FlexCore.query_handler("get_user")
def get_user(params):
    user = USERS.get(params.user_id)
    if user is None:
        raise NotFoundError(f"user {params.user_id} does not exist")
    return user


@FlexCore.query_handler("list_users")
def list_users(params):
    return {"users": sorted(USERS.values(), key=lambda u: u["email"])}


# Welcome messages: a side effect that must happen once per user, not again at every start or
# reload, so this handler is a durable consumer (`python:welcome`: a stored checkpoint, retries,
# dead letters; `flexcore subscriptions list`). It queues the message in a mail spool file (one
# JSON line per message, `WELCOME_SPOOL`, default `data/welcome.spool` under the server's
# working directory, beside the example's store) for a mail transfer agent. After a crash an event may be handled again: the
# event_id in each line lets the mailer drop the duplicate.
WELCOME_SPOOL = os.environ.get(
    "FLEXCORE_EXAMPLE_WELCOME_SPOOL", os.path.join("data", "welcome.spool")
)


@FlexCore.event_handler("user.created", durable="welcome")
def send_welcome(event):
    message = {
        "event_id": event.event_id,
        "to": event.data.email,
        "subject": "Welcome!",
    }
    os.makedirs(os.path.dirname(WELCOME_SPOOL) or ".", exist_ok=True)
    with open(WELCOME_SPOOL, "a", encoding="utf-8") as spool:
        spool.write(json.dumps(message) + "\n")
