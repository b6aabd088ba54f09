"""A Python module that runs beside the Rust sample: it owns `send_greeting` and `greeted`, and
follows the Rust module's `user.created` events."""

from flexcore import Event, FlexCore

GREETED = []  # emails of the users created so far (rebuilt from the log at every start)


@FlexCore.aggregate("greeting", id_field="greeting_id")
class Greeting:
    def __init__(self):
        self.text = None

    @FlexCore.apply("greeting.sent")
    def sent(self, event):
        self.text = event.data.text


@FlexCore.command_handler("send_greeting", aggregate=Greeting, creates=True)
def send_greeting(cmd):
    return Event("greeting.sent", {"greeting_id": cmd.greeting_id, "text": cmd.text})


@FlexCore.event_handler("user.created")
def on_user_created(event):
    if event.data.email not in GREETED:
        GREETED.append(event.data.email)


@FlexCore.query_handler("greeted")
def greeted(params):
    return {"emails": list(GREETED)}
