//! `GET /v1/events/live`: the global log as Server-Sent Events, catch-up then live.
//!
//! Each event's SSE `id` is its global position, so a client that reconnects with
//! `Last-Event-ID` resumes right after the last event it saw: no gap, no duplicate. Streams end
//! when the server shuts down, so graceful shutdown is not held up by open subscriptions.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use flexcore_app::store::{EventFilter, EventReader};
use flexcore_app::subscription::{Subscription, SubscriptionOptions};
use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::{ApiError, AppState};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LiveParams {
    from_position: Option<u64>,
    type_prefix: Option<String>,
    category: Option<String>,
    /// A one-use ticket from `POST /v1/events/live/ticket` (the gate redeems it).
    #[allow(dead_code)]
    ticket: Option<String>,
}

/// Resolves when the server shuts down; never, if no shutdown signal is wired (tests).
async fn shut_down(mut shutdown: watch::Receiver<bool>) {
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[utoipa::path(get, path = "/v1/events/live", tag = "events",
    params(("from_position" = Option<u64>, Query), ("type_prefix" = Option<String>, Query), ("category" = Option<String>, Query),
           ("ticket" = Option<String>, Query, description = "A one-use ticket from POST /v1/events/live/ticket, for clients that cannot send an Authorization header"),
           ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this global position")),
    responses((status = 200, description = "Server-Sent Events: id = global position, event = event type, data = the envelope", content_type = "text/event-stream"),
        (status = 400, description = "Bad parameters", body = crate::openapi::Problem, content_type = "application/problem+json")))]
pub(crate) async fn live(
    State(state): State<AppState>,
    caller: crate::auth::Caller,
    headers: HeaderMap,
    params: Result<Query<LiveParams>, QueryRejection>,
) -> Result<impl axum::response::IntoResponse, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let resume = headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request("Last-Event-ID must be a global position (an integer)")
                })
        })
        .transpose()?;
    let from = match resume {
        Some(last_seen) => last_seen + 1,
        None => params.from_position.unwrap_or(0),
    };
    let options = SubscriptionOptions {
        filter: EventFilter {
            type_prefix: params.type_prefix.filter(|p| !p.is_empty()),
            category: params.category.filter(|c| !c.is_empty()),
        },
        ..SubscriptionOptions::default()
    };
    let reader: Arc<dyn EventReader> = caller.store(&state)?;
    let (sender, receiver) = mpsc::channel::<Result<Event, Infallible>>(256);
    let shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        let mut subscription = Subscription::new(reader, from, options);
        let stop = shut_down(shutdown);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => return,
                () = sender.closed() => return,
                next = subscription.next() => {
                    let event = match next {
                        Ok(envelope) => match Event::default()
                            .id(envelope.global_position.to_string())
                            .event(&envelope.event_type)
                            .json_data(&envelope)
                        {
                            Ok(event) => event,
                            Err(e) => {
                                tracing::error!(error = %e, "cannot encode an event for SSE");
                                return;
                            }
                        },
                        Err(e) => {
                            tracing::warn!(error = %e, "live subscription cannot read the log; retrying");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            continue;
                        }
                    };
                    if sender.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    Ok(Sse::new(ReceiverStream::new(receiver)).keep_alive(KeepAlive::default()))
}
