//! `flexcore.v1.EventStore`: raw appends, reads, and live subscriptions.

use std::sync::Arc;

use flexcore_app::security::RouteClass;
use flexcore_app::store::{EventReader, ReadAll, ReadStream};
use flexcore_app::subscription::{Subscription, SubscriptionOptions};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::pb::event_store_server::EventStore;
use crate::pb::{
    AppendRequest, AppendResponse, ReadAllRequest, ReadAllResponse, ReadStreamRequest,
    ReadStreamResponse, RecordedEvent, SubscribeAllRequest,
};
use crate::{Gateway, convert, error};

/// Events buffered per subscriber before the subscription waits for the client to read.
const SUBSCRIBER_BUFFER: usize = 256;

#[tonic::async_trait]
impl EventStore for Gateway {
    async fn append(
        &self,
        request: Request<AppendRequest>,
    ) -> Result<Response<AppendResponse>, Status> {
        let principal = self.admit(&request, RouteClass::Commands, "EventStore/Append")?;
        let request = request.into_inner();
        let stream_id = convert::stream_id(request.stream_id)?;
        let expected = convert::expected_version(request.expected_version);
        let mut events = convert::new_events(request.events, self.state.limits.max_json_depth)?;
        if let Some(principal) = &principal {
            // Written on the principal's behalf: a client cannot claim another actor.
            for event in &mut events {
                event.metadata.actor = Some(principal.actor());
            }
        }
        let result = self
            .store_for(principal.as_ref())?
            .append(stream_id, expected, events)
            .await
            .map_err(error::from_app)?;
        // A non-empty append always reports its events and the stream's version.
        let (Some(next_version), Some(first_position), Some(last_position)) = (
            result.current_version,
            result.first_position(),
            result.last_position(),
        ) else {
            return Err(error::from_app(flexcore_app::Error::internal(format!(
                "an append to '{}' reported no events",
                result.stream_id
            ))));
        };
        Ok(Response::new(AppendResponse {
            next_version,
            first_position,
            last_position,
        }))
    }

    async fn read_stream(
        &self,
        request: Request<ReadStreamRequest>,
    ) -> Result<Response<ReadStreamResponse>, Status> {
        let principal = self.admit(&request, RouteClass::Reads, "EventStore/ReadStream")?;
        let request = request.into_inner();
        let stream_id = convert::stream_id(request.stream_id)?;
        let direction = convert::direction(request.direction)?;
        let slice = self
            .store_for(principal.as_ref())?
            .read_stream(ReadStream {
                stream_id,
                from_version: request.from_version,
                limit: convert::page_size(request.limit),
                direction,
            })
            .await
            .map_err(error::from_app)?;
        let Some(version) = slice.current_version else {
            return Err(error::not_found(format!(
                "stream '{}' does not exist",
                slice.stream_id
            )));
        };
        Ok(Response::new(ReadStreamResponse {
            stream_id: slice.stream_id.into_string(),
            version,
            events: convert::recorded_events(slice.events)?,
        }))
    }

    async fn read_all(
        &self,
        request: Request<ReadAllRequest>,
    ) -> Result<Response<ReadAllResponse>, Status> {
        let principal = self.admit(&request, RouteClass::Reads, "EventStore/ReadAll")?;
        let request = request.into_inner();
        let slice = self
            .store_for(principal.as_ref())?
            .read_all(ReadAll {
                from_position: request.from_position,
                limit: convert::page_size(request.limit),
                filter: convert::filter(request.type_prefix, request.category),
            })
            .await
            .map_err(error::from_app)?;
        Ok(Response::new(ReadAllResponse {
            events: convert::recorded_events(slice.events)?,
            next_position: slice.next_position,
        }))
    }

    type SubscribeAllStream = ReceiverStream<Result<RecordedEvent, Status>>;

    async fn subscribe_all(
        &self,
        request: Request<SubscribeAllRequest>,
    ) -> Result<Response<Self::SubscribeAllStream>, Status> {
        let principal = self.admit(&request, RouteClass::Live, "EventStore/SubscribeAll")?;
        let request = request.into_inner();
        let reader: Arc<dyn EventReader> = self.store_for(principal.as_ref())?;
        let subscription = Subscription::new(
            reader,
            request.from_position,
            SubscriptionOptions {
                filter: convert::filter(request.type_prefix, request.category),
                ..SubscriptionOptions::default()
            },
        );
        let (events, stream) = mpsc::channel(SUBSCRIBER_BUFFER);
        tokio::spawn(forward(subscription, events, self.closing.clone()));
        Ok(Response::new(ReceiverStream::new(stream)))
    }
}

/// Feeds one subscriber until it goes away, the subscription fails, or the server shuts down.
///
/// The subscription hands out events in position order without gaps or duplicates (it is one
/// `read_all` cursor, history and live alike), so a client resuming from its last position + 1
/// sees every event once.
async fn forward(
    mut subscription: Subscription,
    events: mpsc::Sender<Result<RecordedEvent, Status>>,
    mut closing: crate::Closing,
) {
    loop {
        let item = tokio::select! {
            () = events.closed() => return,
            () = closing.closed() => Err(error::shutting_down()),
            next = subscription.next() => next
                .map_err(error::from_app)
                .and_then(convert::recorded_event),
        };
        let last = item.is_err();
        tokio::select! {
            sent = events.send(item) => if sent.is_err() { return },
            () = closing.closed(), if !last => {
                let _ = events.try_send(Err(error::shutting_down()));
                return;
            }
        }
        if last {
            return;
        }
    }
}
