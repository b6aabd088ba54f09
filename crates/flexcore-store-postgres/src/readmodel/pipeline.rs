//! Sending a batch of requests before reading any answer.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use crate::PostgresError;

/// Requests sent to the server before any answer is read (tokio-postgres writes a request when
/// its future is first polled), so that a batch costs one round trip; the answers are then read
/// in order.
pub(super) struct Pipeline<'a, T> {
    sent: Vec<Sent<'a, T>>,
}

enum Sent<'a, T> {
    Answered(Result<T, PostgresError>),
    Waiting(Pin<Box<dyn Future<Output = Result<T, PostgresError>> + Send + 'a>>),
}

impl<T> Default for Pipeline<'_, T> {
    fn default() -> Self {
        Self { sent: Vec::new() }
    }
}

impl<'a, T> Pipeline<'a, T> {
    /// Polls `request` once, which sends it. Returns `false` when it failed before reaching
    /// the server (e.g. a value that cannot be bound): nothing after it should be sent.
    pub(super) async fn send(
        &mut self,
        request: impl Future<Output = Result<T, PostgresError>> + Send + 'a,
    ) -> bool {
        let mut request: Pin<Box<dyn Future<Output = Result<T, PostgresError>> + Send + 'a>> =
            Box::pin(request);
        let first = std::future::poll_fn(|cx| Poll::Ready(request.as_mut().poll(cx))).await;
        match first {
            Poll::Ready(answer) => {
                let ok = answer.is_ok();
                self.sent.push(Sent::Answered(answer));
                ok
            }
            Poll::Pending => {
                self.sent.push(Sent::Waiting(request));
                true
            }
        }
    }

    pub(super) fn answers(self) -> Answers<'a, T> {
        Answers {
            sent: self.sent.into_iter(),
        }
    }
}

pub(super) struct Answers<'a, T> {
    sent: std::vec::IntoIter<Sent<'a, T>>,
}

impl<T> Answers<'_, T> {
    /// The next request's answer, in the order they were sent.
    pub(super) async fn next_answer(&mut self) -> Option<Result<T, PostgresError>> {
        Some(match self.sent.next()? {
            Sent::Answered(answer) => answer,
            Sent::Waiting(request) => request.await,
        })
    }
}
