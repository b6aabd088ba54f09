"""Handlers that read their caller: flexcore.principal() in a command and in a query."""

import flexcore
from flexcore import Event, FlexCore


@FlexCore.aggregate("note", id_field="note_id")
class Note:
    pass


@FlexCore.command_handler("write_note", Note, creates=True)
def write_note(cmd):
    who = flexcore.principal()
    return Event("note.written", {"by": None if who is None else who.sub})


@FlexCore.query_handler("whoami")
def whoami(params):
    who = flexcore.principal()
    if who is None:
        return None
    return {"sub": who.sub, "roles": who.roles, "tenant": who.tenant}
