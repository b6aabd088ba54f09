//! What every gateway refuses before it decodes a request: one set of limits, so HTTP and gRPC
//! accept the same requests.

/// Request limits, shared by the HTTP and gRPC gateways.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// The largest request accepted, in bytes: an HTTP body (larger → 413) or a gRPC message
    /// (larger → `OUT_OF_RANGE`, as tonic answers).
    pub max_request_bytes: usize,
    /// The deepest JSON nesting accepted in a body or a `*_json` field (deeper → HTTP 400,
    /// gRPC `INVALID_ARGUMENT`).
    pub max_json_depth: usize,
}

impl Default for RequestLimits {
    /// 4 MiB, 64 levels.
    fn default() -> Self {
        Self {
            max_request_bytes: 4 * 1024 * 1024,
            max_json_depth: 64,
        }
    }
}
