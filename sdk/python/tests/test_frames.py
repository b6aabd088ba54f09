"""The frame codec and the error objects, in process."""

import io
import struct

import pytest

from flexcore_plugin import MAX_FRAME_BYTES, NotFound, ProtocolViolation, ValidationError, encode_frame, read_frame


def test_a_frame_is_a_big_endian_length_then_utf8_json():
    frame = encode_frame({"type": "log", "message": "é"})
    body = '{"type":"log","message":"é"}'.encode()
    assert frame == struct.pack(">I", len(body)) + body


def test_frames_read_back_in_order_and_end_of_file_is_none():
    stream = io.BytesIO(encode_frame({"type": "ping", "id": 1}) + encode_frame({"type": "shutdown"}))
    assert read_frame(stream) == {"type": "ping", "id": 1}
    assert read_frame(stream) == {"type": "shutdown"}
    assert read_frame(stream) is None


@pytest.mark.parametrize("cut", [2, 4, 10])
def test_a_stream_ending_inside_a_frame_is_a_violation(cut):
    frame = encode_frame({"type": "ping", "id": 1})
    with pytest.raises(ProtocolViolation, match="ended inside"):
        read_frame(io.BytesIO(frame[:cut]))


def test_a_length_over_16_mib_is_a_violation_before_the_body_is_read():
    with pytest.raises(ProtocolViolation, match="16 MiB"):
        read_frame(io.BytesIO(struct.pack(">I", MAX_FRAME_BYTES + 1)))


@pytest.mark.parametrize("body", [b"[1]", b'{"id": 1}', b'{"type": 2}', b"{nope", b"\xff\xfe"])
def test_a_body_that_is_not_an_object_with_a_string_type_is_a_violation(body):
    with pytest.raises(ProtocolViolation):
        read_frame(io.BytesIO(struct.pack(">I", len(body)) + body))


def test_errors_carry_their_code_and_validation_its_fields():
    assert ValidationError("bad", [{"path": "/email", "message": "blocked"}]).to_protocol() == {
        "code": "validation_failed",
        "message": "bad",
        "errors": [{"path": "/email", "message": "blocked"}],
    }
    assert NotFound("gone").to_protocol() == {"code": "not_found", "message": "gone"}
