"""The seed's Python handlers (its "Go-Python Integration" section), run as written.

The first part is the seed's code, verbatim. The second part completes it with the names it
uses but does not define: the imports, the ``UserCreatedEvent`` dataclass, ``generate_id``,
and the two side effects of the event handler (here they print, so a test or an operator can
see them run).
"""

# ---- the seed, verbatim ---------------------------------------------------------------------

# Python side - Event handler registration
from flexcore import FlexCore

@FlexCore.event_handler("user.created")
def handle_user_created(event):
    # Process user creation event
    send_welcome_email(event.data.email)
    update_analytics(event.data)

@FlexCore.command_handler("create_user")
def create_user_command(cmd):
    # Validate command
    if not cmd.email:
        raise ValidationError("Email required")

    # Return domain event
    return UserCreatedEvent(
        user_id=generate_id(),
        email=cmd.email,
        created_at=datetime.utcnow()
    )

# ---- what the seed leaves undefined ---------------------------------------------------------

import uuid  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from datetime import datetime  # noqa: E402

from flexcore import ValidationError  # noqa: E402


@dataclass
class UserCreatedEvent:
    """``user.created`` by the naming convention; ``user_id`` puts it in stream ``user-<id>``."""

    user_id: str
    email: str
    created_at: datetime  # naive (utcnow): stored as UTC, "…+00:00"


def generate_id():
    """A new user id."""
    return str(uuid.uuid4())


SIGNUPS = []  # what update_analytics counted (the log is replayed at every start and reload)


def send_welcome_email(email):
    """Stands in for a mail service: prints the address."""
    print(f"welcome email to {email}", flush=True)


def update_analytics(data):
    """Stands in for an analytics service: counts the signup."""
    SIGNUPS.append(data.user_id)
    print(f"analytics: {len(SIGNUPS)} signups", flush=True)
