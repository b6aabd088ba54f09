//! The sample domain's side effect: a welcome notice for every new user.

use std::sync::Arc;

use async_trait::async_trait;
use flexcore_app::Result;
use flexcore_app::event_bus::EventHandler;
use flexcore_app::store::{EventAppender, EventFilter};
use flexcore_domain::{EventEnvelope, EventId, ExpectedVersion, NewEvent, RawJson, StreamId};
use uuid::Uuid;

/// The sample domain's side effect, run as a durable consumer (see [`flexcore_app::durable`]): every
/// `user.created` queues a welcome notification, the event `notification.welcome_queued` on
/// the stream `notification-{user_id}`.
///
/// Delivery is at least once, so the handler is idempotent: the notification's event id is
/// derived from the `user.created` event's id, and the store answers a re-sent event id with
/// the original result, writing nothing.
pub struct WelcomeNotifier {
    store: Arc<dyn EventAppender>,
}

impl WelcomeNotifier {
    /// The consumer's name.
    pub const NAME: &'static str = "welcome";

    /// A notifier appending to `store`.
    pub fn new(store: Arc<dyn EventAppender>) -> Self {
        Self { store }
    }

    /// The events it reads.
    pub fn filter() -> EventFilter {
        EventFilter {
            type_prefix: Some("user.created".into()),
            ..EventFilter::default()
        }
    }
}

#[async_trait]
impl EventHandler for WelcomeNotifier {
    async fn handle(&self, event: &EventEnvelope) -> Result<()> {
        if event.event_type != "user.created" {
            return Ok(());
        }
        // Leniently decoded: a user forgotten before its welcome went out has a redacted
        // address, and nobody to welcome.
        #[derive(serde::Deserialize)]
        struct Created {
            user_id: uuid::Uuid,
            email: String,
        }
        let Created { user_id, email } = event.data.decode().map_err(|e| {
            flexcore_app::Error::validation(format!(
                "cannot decode event {} of type 'user.created': {e}",
                event.event_id
            ))
        })?;
        if email == flexcore_app::gdpr::REDACTED {
            return Ok(());
        }
        let data = serde_json::json!({
            "user_id": user_id,
            "email": email,
            "source_event_id": event.event_id,
        });
        let notice = NewEvent::new("notification.welcome_queued", RawJson::from_value(&data))?
            .with_id(notice_id(event.event_id));
        self.store
            .append(
                StreamId::new(format!("notification-{user_id}"))?,
                ExpectedVersion::Any,
                vec![notice],
            )
            .await?;
        Ok(())
    }
}

/// The welcome notice's id for a `user.created` event: stable, so a re-delivery appends
/// nothing new. A UUIDv8 keeping the source id's first six bytes (a UUIDv7's millisecond
/// timestamp) and salting the rest: distinct from the source id and from every other notice,
/// and, like the ids the store assigns, increasing with time, so the store's event-id index
/// grows at its right edge instead of taking each notice at a random page.
fn notice_id(source: EventId) -> EventId {
    let mut bytes = *source.0.as_bytes();
    for (byte, salt) in bytes[6..].iter_mut().zip(b"welcome-notice") {
        *byte ^= salt;
    }
    EventId(Uuid::new_v8(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notice_ids_are_stable_distinct_and_ordered_like_their_sources() {
        let sources: Vec<EventId> = (0..1000).map(|_| EventId(Uuid::now_v7())).collect();
        let notices: Vec<EventId> = sources.iter().map(|s| notice_id(*s)).collect();
        assert_eq!(notice_id(sources[0]), notices[0], "stable");
        let distinct: std::collections::HashSet<_> = sources
            .iter()
            .chain(notices.iter())
            .map(|id| id.0)
            .collect();
        assert_eq!(
            distinct.len(),
            2000,
            "no notice id equals a source id or another notice id"
        );
        for (source, notice) in sources.iter().zip(&notices) {
            assert_eq!(notice.0.get_version_num(), 8);
            assert_eq!(source.0.as_bytes()[..6], notice.0.as_bytes()[..6]);
        }
        for pair in sources.windows(2).zip(notices.windows(2)) {
            let (s, n) = pair;
            if s[0].0.as_bytes()[..6] < s[1].0.as_bytes()[..6] {
                assert!(
                    n[0].0.as_bytes() < n[1].0.as_bytes(),
                    "a later source, a later notice"
                );
            }
        }
    }
}
