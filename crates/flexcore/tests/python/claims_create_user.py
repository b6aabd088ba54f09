"""A Python module that claims `create_user`, which the Rust sample module owns too."""

from flexcore import Event, FlexCore


@FlexCore.aggregate("person", id_field="person_id")
class Person:
    def __init__(self):
        self.email = None

    @FlexCore.apply("person.created")
    def created(self, event):
        self.email = event.data.email


@FlexCore.command_handler("create_user", aggregate=Person, creates=True)
def create_user(cmd):
    return Event("person.created", {"person_id": cmd.person_id, "email": cmd.email})
