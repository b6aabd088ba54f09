"""Write FlexCore out-of-process plugins in Python.

A plugin is a program the engine starts and talks to over stdin/stdout with the frames and
messages of ``docs/plugin-protocol.md``. :class:`Plugin` registers a handler per hook and type
and serves the protocol; the exceptions below are the refusals a handler can raise.
"""

from .errors import Conflict, Forbidden, HandlerError, NotFound, ValidationError
from .frames import MAX_FRAME_BYTES, ProtocolViolation, encode_frame, read_frame
from .plugin import HOOKS, PROTOCOL_VERSION, Context, Plugin

__all__ = [
    "Conflict",
    "Context",
    "Forbidden",
    "HOOKS",
    "HandlerError",
    "MAX_FRAME_BYTES",
    "NotFound",
    "PROTOCOL_VERSION",
    "Plugin",
    "ProtocolViolation",
    "ValidationError",
    "encode_frame",
    "read_frame",
]
