"""The sample users domain, as handler code would write it."""

from flexcore import Event, FlexCore, ValidationError

USERS = {}  # a read model kept by the event handler below


@FlexCore.aggregate("user", id_field="user_id")
class User:
    def __init__(self):
        self.email = None
        self.renames = 0

    @FlexCore.apply("user.created")
    def created(self, event):
        self.email = event.data.email

    @FlexCore.apply("user.renamed")
    def renamed(self, event):
        self.renames += 1


@FlexCore.command_handler("create_user", aggregate=User)
def create_user_command(cmd, state):
    if state.email is not None:
        raise ValidationError(f"user {cmd.user_id} already exists")
    if "@" not in cmd.email:
        raise ValidationError("email is not valid")
    return {
        "type": "user.created",
        "data": {"email": cmd.email, "name": cmd.profile.name, "tags": cmd.get("tags", [])},
    }


@FlexCore.command_handler("rename_user", aggregate=User)
def rename_user(cmd, state):
    if state.email is None:
        raise ValidationError(f"user {cmd.user_id} does not exist")
    # Returns a list; the number of earlier renames shows the handler saw the current state.
    return [Event("user.renamed", {"name": cmd.name, "renames_before": state.renames})]


@FlexCore.command_handler("touch_user", aggregate=User)
def touch_user(cmd):
    return None  # nothing changed


@FlexCore.event_handler("user.created")
def handle_user_created(event):
    USERS[event.data.email] = {
        "email": event.data.email,
        "event_type": event.event_type,
        "stream_id": event.stream_id,
        "stream_version": event.stream_version,
        "global_position": event.global_position,
    }


@FlexCore.query_handler("get_user")
def get_user(params):
    user = USERS.get(params.email)
    if user is None:
        raise ValidationError(f"no user {params.email}")
    return user
