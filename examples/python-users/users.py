"""The FlexCore sample users domain, written in Python.

The same API as the built-in Rust sample: ``create_user {email, profile?}``,
``change_email {user_id, email}``, ``get_user {user_id}``, plus ``list_users {}``.

Email uniqueness: the Rust domain claims an ``email-{address}`` stream in the same atomic
append as the user's event. A Python command handler appends to its aggregate's stream only,
so here uniqueness is kept by an in-process index, ``EMAILS``: command handlers claim an
address while deciding (Python handlers run one at a time, so check-and-claim cannot
interleave), and the event handlers confirm it from the log. It holds within one server
process; two servers sharing a database, or a reload racing an in-flight create, can let a
duplicate through. See README.md.
"""

import json
import os

from flexcore import Event, FlexCore, ValidationError

MAX_EMAIL_LEN = 254

# Read model and uniqueness index, rebuilt from the log at every start and reload.
USERS = {}  # user_id -> {"user_id", "email", "profile", "version", "stream_id"}
EMAILS = {}  # address -> user_id


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


def claim(address, user_id):
    owner = EMAILS.get(address)
    if owner is not None and owner != user_id:
        raise ValidationError(f"email {address} is already in use")
    EMAILS[address] = user_id


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
    claim(email, cmd.user_id)
    return Event(
        "user.created",
        {
            "user_id": cmd.user_id,
            "email": email,
            "profile": profile.to_dict() if profile is not None else {},
        },
    )


@FlexCore.command_handler("change_email", aggregate=User)
def change_email(cmd, user):
    if user.user_id is None:
        raise ValidationError(f"user {cmd.user_id} does not exist")
    email = parse_email(cmd.email)
    if email == user.email:
        return None  # nothing changes
    claim(email, user.user_id)
    return Event(
        "user.email_changed",
        {"user_id": user.user_id, "old_email": user.email, "new_email": email},
    )


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
    EMAILS[event.data.email] = user_id


@FlexCore.event_handler("user.email_changed")
def on_email_changed(event):
    user_id = event.data.user_id
    known = USERS.get(user_id)
    if known is None or known["version"] >= event.stream_version:
        return
    known["email"] = event.data.new_email
    known["version"] = event.stream_version
    if EMAILS.get(event.data.old_email) == user_id:
        del EMAILS[event.data.old_email]
    EMAILS[event.data.new_email] = user_id


@FlexCore.query_handler("get_user")
def get_user(params):
    user = USERS.get(params.user_id)
    if user is None:
        raise ValidationError(f"user {params.user_id} does not exist")
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
