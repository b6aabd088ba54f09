"""A stateless command that refuses in every way a handler can: `kind` picks the exception."""

from flexcore import ConflictError, FlexCore, Forbidden, NotFoundError, ValidationError

REFUSALS = {
    "validation": ValidationError,
    "conflict": ConflictError,
    "not_found": NotFoundError,
    "forbidden": Forbidden,
}


@FlexCore.command_handler("refuse")
def refuse(cmd):
    raise REFUSALS[cmd.kind](f"refused as {cmd.kind}", code=cmd.get("code"))
