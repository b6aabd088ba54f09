//! Audit records of denied attempts, on their own log target (`flexcore::audit`), so a
//! deployment can route them apart (`FLEXCORE_LOG=info,flexcore::audit=info`). Accepted changes
//! need no record here: every event names its `actor`, so the event log is their audit trail.

use super::Principal;

/// The tracing target of audit records.
pub const AUDIT_TARGET: &str = "flexcore::audit";

/// Records a denied attempt: who (the principal, or the client address when anonymous), what
/// they tried (`action` on `target`) and why it was refused. Never includes a credential.
pub fn denied(
    principal: Option<&Principal>,
    client: Option<&str>,
    action: &str,
    target: &str,
    reason: &str,
) {
    metrics::counter!("flexcore_denied_total", "action" => action.to_owned()).increment(1);
    tracing::warn!(
        target: AUDIT_TARGET,
        outcome = "denied",
        principal = principal.map(|p| p.subject.as_str()),
        method = principal.map(|p| p.method.as_str()),
        client,
        action,
        target,
        reason,
        "access denied"
    );
}
