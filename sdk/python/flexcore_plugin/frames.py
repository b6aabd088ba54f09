"""Frames (section 1 of the protocol): a 4-byte big-endian length, then that many bytes of UTF-8
JSON holding one object with a string ``type``."""

import json
import struct

#: The largest frame either side may send: 16 MiB of JSON.
MAX_FRAME_BYTES = 16 * 1024 * 1024


class ProtocolViolation(Exception):
    """A frame or message that breaks sections 1 or 2 of the protocol."""


def encode_frame(message):
    """The bytes of ``message`` (a dict) as one frame."""
    body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(body) > MAX_FRAME_BYTES:
        raise ProtocolViolation(f"a frame of {len(body)} bytes exceeds the 16 MiB limit")
    return struct.pack(">I", len(body)) + body


def _read_exactly(stream, size):
    chunks = []
    remaining = size
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_frame(stream):
    """Reads one frame from a binary stream and returns its message (a dict), or ``None`` when
    the stream ends before the first byte of a frame (the engine closed stdin)."""
    prefix = _read_exactly(stream, 4)
    if not prefix:
        return None
    if len(prefix) < 4:
        raise ProtocolViolation("the stream ended inside a frame's length")
    (length,) = struct.unpack(">I", prefix)
    if length > MAX_FRAME_BYTES:
        raise ProtocolViolation(f"a frame of {length} bytes exceeds the 16 MiB limit")
    body = _read_exactly(stream, length)
    if len(body) < length:
        raise ProtocolViolation("the stream ended inside a frame")
    try:
        message = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise ProtocolViolation(f"a frame is not UTF-8 JSON: {error}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolViolation("a frame is not a JSON object with a string `type`")
    return message
