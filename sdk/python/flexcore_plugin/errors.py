"""The refusals a handler raises; each becomes a protocol error code (section 2.2)."""


class HandlerError(Exception):
    """A refusal answered with this class's ``code``; subclasses name the codes the engine maps
    to its callers' answers."""

    code = "internal"

    def __init__(self, message):
        super().__init__(message)
        self.message = message

    def to_protocol(self):
        """The ``error`` object of a ``result`` message."""
        return {"code": self.code, "message": self.message}


class ValidationError(HandlerError):
    """``validation_failed`` (422): ``errors`` lists the invalid fields as
    ``{"path": <JSON pointer>, "message": …}``."""

    code = "validation_failed"

    def __init__(self, message, errors=None):
        super().__init__(message)
        self.errors = [{"path": str(e["path"]), "message": str(e["message"])} for e in errors or []]

    def to_protocol(self):
        error = super().to_protocol()
        if self.errors:
            error["errors"] = self.errors
        return error


class NotFound(HandlerError):
    """``not_found`` (404)."""

    code = "not_found"


class Conflict(HandlerError):
    """``conflict`` (409)."""

    code = "conflict"


class Forbidden(HandlerError):
    """``forbidden`` (403)."""

    code = "forbidden"
