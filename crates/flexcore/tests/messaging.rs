//! The message gateway wired into `flexcore serve`: with `FLEXCORE_INBOUND_URL` and
//! `FLEXCORE_OUTBOX_URL` on Redis streams, a command message is executed and replied to, and
//! its committed event is published by the outbox relay.

mod common;

use std::time::{Duration, Instant};

use common::Server;
use flexcore_broker::redis::AsyncCommands;
use flexcore_test_support::services::{redis_url, unique_name};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_arrive_from_a_stream_and_events_leave_through_the_outbox() {
    let Some(redis) = redis_url() else {
        return;
    };
    let prefix = unique_name("fc_serve");
    let (commands, replies, events) = (
        format!("{prefix}:commands"),
        format!("{prefix}:replies"),
        format!("{prefix}:events"),
    );
    let data = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", data.path().join("flexcore.db").display());
    let redis_base = redis.trim_end_matches('/');
    let _server = Server::start_with_env(
        data.path(),
        &url,
        &[
            (
                "FLEXCORE_INBOUND_URL",
                &format!("{redis_base}/?stream={commands}"),
            ),
            (
                "FLEXCORE_OUTBOX_URL",
                &format!("{redis_base}/?stream={events}"),
            ),
        ],
    )
    .await;
    let client = flexcore_broker::redis::Client::open(redis.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let message = json!({
        "command_type": "create_user",
        "payload": {"email": "broker@example.com"},
        "idempotency_key": format!("{prefix}-1"),
        "reply_to": replies,
        "correlation_id": "c-1",
    });
    let _: String = conn
        .xadd(&commands, "*", &[("message", message.to_string())])
        .await
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    let reply = loop {
        let entries: Vec<std::collections::HashMap<String, String>> =
            read_stream(&mut conn, &replies).await;
        if let Some(entry) = entries.into_iter().next() {
            break entry;
        }
        assert!(Instant::now() < deadline, "no reply on {replies}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let reply: Value = serde_json::from_str(&reply["reply"]).unwrap();
    assert_eq!(reply["ok"], true, "{reply}");
    let event_id = reply["result"]["events"][0]["event_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let published = loop {
        let entries = read_stream(&mut conn, &events).await;
        if let Some(entry) = entries
            .into_iter()
            .find(|e| e.get("event_id") == Some(&event_id))
        {
            break entry;
        }
        assert!(
            Instant::now() < deadline,
            "user.created never reached {events}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(published["event_type"], "user.created");

    let _: () = conn
        .del(&[
            &commands,
            &replies,
            &events,
            &format!("{commands}.dead-letter"),
        ])
        .await
        .unwrap();
}

/// Every entry of a stream, as field maps.
async fn read_stream(
    conn: &mut flexcore_broker::redis::aio::MultiplexedConnection,
    key: &str,
) -> Vec<std::collections::HashMap<String, String>> {
    let reply: flexcore_broker::redis::streams::StreamRangeReply =
        conn.xrange_all(key).await.unwrap();
    reply
        .ids
        .into_iter()
        .map(|entry| {
            entry
                .map
                .into_iter()
                .filter_map(|(k, v)| {
                    flexcore_broker::redis::from_redis_value::<String>(v)
                        .ok()
                        .map(|v| (k, v))
                })
                .collect()
        })
        .collect()
}
