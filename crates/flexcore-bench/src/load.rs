//! The load loop of the gateway and Python benches: N clients drive `create_user`, back to
//! back (closed loop) or on a fixed schedule (open loop), timing every command.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use flexcore_app::command::{Command, CommandBus, CommandContext};
use serde_json::json;
use tokio::task::JoinSet;

/// One run of one case.
pub(crate) struct Run {
    /// Commands completed per second of wall time.
    pub(crate) rate: f64,
    /// From each command's scheduled time (open loop) or its sending (back to back), sorted.
    pub(crate) latencies: Vec<Duration>,
    /// From each command's sending, sorted.
    pub(crate) service: Vec<Duration>,
    /// The store appends the commands made, timed around the store, sorted.
    pub(crate) appends: Vec<Duration>,
    /// Process CPU time / wall time (Linux; `None` elsewhere).
    pub(crate) cpu_cores: Option<f64>,
}

/// Something that runs `create_user` for one connection.
pub(crate) trait CreateUser: Send + 'static {
    /// Creates the user with this address; an error unless the answer is a success.
    fn create_user(&mut self, email: String) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// The command bus `flexcore serve` wires, without a gateway: what the Python bench measures,
/// and the gateway bench's `bus` layer.
pub(crate) struct BusClient(pub(crate) Arc<dyn CommandBus>);

impl CreateUser for BusClient {
    async fn create_user(&mut self, email: String) -> anyhow::Result<()> {
        let command = Command {
            command_type: "create_user".into(),
            payload: json!({ "email": email }),
        };
        self.0.send(&CommandContext::default(), &command).await?;
        Ok(())
    }
}

/// The connection counts to measure, in the order given, each once and at least 1.
pub(crate) fn distinct_connections(connections: &[usize]) -> Vec<usize> {
    let mut distinct: Vec<usize> = Vec::new();
    for n in connections.iter().map(|&c| c.max(1)) {
        if !distinct.contains(&n) {
            distinct.push(n);
        }
    }
    distinct
}

/// Every client drives `create_user` until `duration` has passed, back to back or (with
/// `rate`) on a fixed schedule; the rate is commands completed over the wall time until the
/// last one finished. The appends are left for the caller to fill in.
pub(crate) async fn measure<C: CreateUser>(
    clients: Vec<C>,
    duration: Duration,
    rate: Option<f64>,
) -> anyhow::Result<Run> {
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let deadline = started + duration;
    let connections = clients.len().max(1) as f64;
    // Open loop: each connection sends on its own fixed schedule, staggered.
    let period = rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(connections / r));
    let mut tasks = JoinSet::new();
    for (task, mut client) in clients.into_iter().enumerate() {
        tasks.spawn(async move {
            let mut latencies = Vec::with_capacity(4096);
            let mut service = Vec::with_capacity(4096);
            let mut n = 0u64;
            let mut scheduled = period.map(|p| started + p.mul_f64(task as f64 / connections));
            while scheduled.unwrap_or_else(Instant::now) < deadline {
                let email = format!("u{task}-{n}@bench.example");
                // Latency counts from the scheduled time, so a slow answer that delays the
                // next command is not hidden (no coordinated omission).
                let due = match (scheduled, period) {
                    (Some(at), Some(p)) => {
                        tokio::time::sleep_until(at.into()).await;
                        scheduled = Some(at + p);
                        Some(at)
                    }
                    _ => None,
                };
                let sent = Instant::now();
                client
                    .create_user(email)
                    .await
                    .with_context(|| format!("connection {task}, command {n}"))?;
                let done = Instant::now();
                latencies.push(done - due.unwrap_or(sent));
                service.push(done - sent);
                n += 1;
            }
            anyhow::Ok((latencies, service))
        });
    }
    let (mut latencies, mut service) = (Vec::new(), Vec::new());
    while let Some(joined) = tasks.join_next().await {
        // Dropping the set on an error aborts the other clients.
        let (from_due, from_sent) = joined.context("a client task panicked")??;
        latencies.extend(from_due);
        service.extend(from_sent);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_cores = cpu_seconds()
        .zip(cpu_before)
        .map(|(after, before)| (after - before) / elapsed);
    latencies.sort_unstable();
    service.sort_unstable();
    Ok(Run {
        rate: latencies.len() as f64 / elapsed,
        latencies,
        service,
        appends: Vec::new(),
        cpu_cores,
    })
}

/// This process's user + system CPU time, from `/proc/self/stat` (Linux, 100 ticks/s).
pub(crate) fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at field 3 (`state`);
    // `utime` and `stime` are fields 14 and 15.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_cpu_time_is_readable_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(cpu_seconds().is_some());
        }
    }

    #[test]
    fn each_connection_count_is_measured_once() {
        assert_eq!(distinct_connections(&[2, 2, 0, 3, 1]), [2, 1, 3]);
    }
}
