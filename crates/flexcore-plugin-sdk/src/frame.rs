//! Frames (section 1 of `docs/plugin-protocol.md`): a 4-byte big-endian length, then that many
//! bytes of UTF-8 JSON holding one object with a string `type`.

use std::io::{self, Read, Write};

use serde_json::{Map, Value};

/// The largest frame either side may send: 16 MiB of JSON.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// A frame that breaks section 1 of the protocol, or the stream under it failing.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Reading or writing the stream failed.
    #[error("plugin stream: {0}")]
    Io(#[from] io::Error),
    /// The stream ended inside a frame (after at least one byte of it).
    #[error("the stream ended inside a frame")]
    Truncated,
    /// The length prefix (or a message to send) exceeds [`MAX_FRAME_BYTES`].
    #[error("frame of {0} bytes exceeds the 16 MiB limit")]
    TooLarge(usize),
    /// The frame's bytes are not JSON.
    #[error("frame is not JSON: {0}")]
    NotJson(serde_json::Error),
    /// The frame is JSON but not an object with a string `type`.
    #[error("frame is not a JSON object with a string `type`")]
    NotAMessage,
}

/// A message as read from a frame: a JSON object whose `type` is a string.
pub type Message = Map<String, Value>;

/// Reads one frame. `Ok(None)` is a clean end of file: the stream ended before the first byte
/// of a frame (the engine closed the plugin's stdin).
pub fn read_frame(reader: &mut impl Read) -> Result<Option<Message>, FrameError> {
    let mut prefix = [0u8; 4];
    let mut filled = 0;
    while filled < prefix.len() {
        match reader.read(&mut prefix[filled..]) {
            Ok(0) if filled == 0 => return Ok(None),
            Ok(0) => return Err(FrameError::Truncated),
            Ok(n) => filled += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error.into()),
        }
    }
    let length = u32::from_be_bytes(prefix) as usize;
    if length > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(length));
    }
    let mut body = vec![0u8; length];
    reader
        .read_exact(&mut body)
        .map_err(|error| match error.kind() {
            io::ErrorKind::UnexpectedEof => FrameError::Truncated,
            _ => FrameError::Io(error),
        })?;
    match serde_json::from_slice::<Value>(&body).map_err(FrameError::NotJson)? {
        Value::Object(message) if message.get("type").is_some_and(Value::is_string) => {
            Ok(Some(message))
        }
        _ => Err(FrameError::NotAMessage),
    }
}

/// Writes `message` as one frame and flushes, so the engine sees it at once.
pub fn write_frame(writer: &mut impl Write, message: &Value) -> Result<(), FrameError> {
    let body = serde_json::to_vec(message).map_err(FrameError::NotJson)?;
    if body.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(body.len()));
    }
    let length = u32::try_from(body.len()).map_err(|_| FrameError::TooLarge(body.len()))?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&length.to_be_bytes());
    frame.extend_from_slice(&body);
    writer.write_all(&frame)?;
    writer.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn encoded(message: &Value) -> Vec<u8> {
        let mut bytes = Vec::new();
        write_frame(&mut bytes, message).unwrap();
        bytes
    }

    #[test]
    fn a_frame_is_a_big_endian_length_then_the_json() {
        let bytes = encoded(&json!({"type": "ping", "id": 7}));
        let body = br#"{"id":7,"type":"ping"}"#;
        assert_eq!(&bytes[..4], &(body.len() as u32).to_be_bytes());
        assert_eq!(
            serde_json::from_slice::<Value>(&bytes[4..]).unwrap(),
            json!({"type": "ping", "id": 7})
        );
    }

    #[test]
    fn frames_read_back_in_order_then_end_of_file_is_none() {
        let mut bytes = encoded(&json!({"type": "ping", "id": 1}));
        bytes.extend(encoded(&json!({"type": "shutdown", "deadline_ms": 500})));
        let mut reader = bytes.as_slice();
        assert_eq!(read_frame(&mut reader).unwrap().unwrap()["id"], 1);
        assert_eq!(
            read_frame(&mut reader).unwrap().unwrap()["type"],
            "shutdown"
        );
        assert!(read_frame(&mut reader).unwrap().is_none());
    }

    #[test]
    fn a_stream_ending_inside_a_frame_is_truncated() {
        let bytes = encoded(&json!({"type": "ping", "id": 1}));
        for cut in [2, 4, bytes.len() - 1] {
            let error = read_frame(&mut &bytes[..cut]).unwrap_err();
            assert!(
                matches!(error, FrameError::Truncated),
                "cut at {cut}: {error}"
            );
        }
    }

    #[test]
    fn a_length_over_16_mib_is_refused_before_reading_the_body() {
        let prefix = ((MAX_FRAME_BYTES + 1) as u32).to_be_bytes();
        let error = read_frame(&mut prefix.as_slice()).unwrap_err();
        assert!(matches!(error, FrameError::TooLarge(n) if n == MAX_FRAME_BYTES + 1));
    }

    #[test]
    fn json_that_is_not_an_object_with_a_string_type_is_not_a_message() {
        for body in [&b"[1, 2]"[..], br#"{"id": 1}"#, br#"{"type": 3}"#] {
            let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
            bytes.extend_from_slice(body);
            let error = read_frame(&mut bytes.as_slice()).unwrap_err();
            assert!(matches!(error, FrameError::NotAMessage), "{error}");
        }
        let mut bytes = 3u32.to_be_bytes().to_vec();
        bytes.extend_from_slice(b"{no");
        assert!(matches!(
            read_frame(&mut bytes.as_slice()),
            Err(FrameError::NotJson(_))
        ));
    }
}
