//! Token buckets per client and route class (governor's GCRA, one keyed limiter per class).

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use flexcore_app::security::{Admission, RouteClass};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::AuthError;

/// Forget idle clients' buckets every this many checks (a full bucket needs no memory).
const PRUNE_EVERY: u64 = 10_000;

/// One bucket's shape: `per_second` tokens refill each second, at most `burst` wait.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    /// Sustained requests per second.
    pub per_second: f64,
    /// Requests that may arrive at once.
    pub burst: u32,
}

impl Bucket {
    fn quota(self, class: RouteClass) -> Result<Quota, AuthError> {
        let invalid = || {
            AuthError::RateLimit(format!(
                "[rate_limit.{}]: per_second must be > 0 and burst ≥ 1",
                class.as_str()
            ))
        };
        if !(self.per_second.is_finite() && self.per_second > 0.0) {
            return Err(invalid());
        }
        let burst = NonZeroU32::new(self.burst).ok_or_else(invalid)?;
        let period = Duration::from_secs_f64(1.0 / self.per_second);
        Ok(Quota::with_period(period)
            .ok_or_else(invalid)?
            .allow_burst(burst))
    }
}

/// Rate limits per client (the principal's subject, or the address when anonymous) and route
/// class.
pub struct TokenBuckets {
    limiters: Vec<(RouteClass, DefaultKeyedRateLimiter<String>)>,
    checks: AtomicU64,
    clock: DefaultClock,
}

impl std::fmt::Debug for TokenBuckets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenBuckets")
            .field(
                "classes",
                &self
                    .limiters
                    .iter()
                    .map(|(c, _)| c.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl TokenBuckets {
    /// One bucket shape per class (`bucket_of(class)`); a class without one is not limited.
    pub fn new(bucket_of: impl Fn(RouteClass) -> Option<Bucket>) -> Result<Self, AuthError> {
        let mut limiters = Vec::new();
        for class in RouteClass::ALL {
            if let Some(bucket) = bucket_of(class) {
                limiters.push((
                    class,
                    DefaultKeyedRateLimiter::dashmap(bucket.quota(class)?),
                ));
            }
        }
        Ok(Self {
            limiters,
            checks: AtomicU64::new(0),
            clock: DefaultClock::default(),
        })
    }
}

impl Admission for TokenBuckets {
    fn admit(&self, class: RouteClass, client: &str) -> Result<(), Duration> {
        let Some((_, limiter)) = self.limiters.iter().find(|(c, _)| *c == class) else {
            return Ok(());
        };
        if self.checks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            limiter.retain_recent();
        }
        // Keys are short strings; allocating one per check is cheaper than the bucket's lock.
        limiter
            .check_key(&client.to_owned())
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spent_bucket_refuses_with_a_wait_and_others_are_untouched() {
        let buckets = TokenBuckets::new(|class| {
            (class == RouteClass::Commands).then_some(Bucket {
                per_second: 1.0,
                burst: 2,
            })
        })
        .unwrap();
        assert!(buckets.admit(RouteClass::Commands, "p:ann").is_ok());
        assert!(buckets.admit(RouteClass::Commands, "p:ann").is_ok());
        let wait = buckets.admit(RouteClass::Commands, "p:ann").unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(
            buckets.admit(RouteClass::Commands, "p:bob").is_ok(),
            "per client"
        );
        for _ in 0..100 {
            assert!(
                buckets.admit(RouteClass::Queries, "p:ann").is_ok(),
                "unlimited class"
            );
        }
    }

    #[test]
    fn invalid_buckets_are_refused() {
        for bucket in [
            Bucket {
                per_second: 0.0,
                burst: 1,
            },
            Bucket {
                per_second: 1.0,
                burst: 0,
            },
            Bucket {
                per_second: f64::NAN,
                burst: 1,
            },
        ] {
            assert!(TokenBuckets::new(|_| Some(bucket)).is_err());
        }
    }
}
