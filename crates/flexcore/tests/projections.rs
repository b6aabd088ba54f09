//! The read side of the real binary: the users read model over HTTP with read-your-writes,
//! `flexcore projections status|rebuild`, and a rebuild that keeps answering.

mod common;

use std::process::{Command, Output};
use std::sync::Arc;

use common::Server;
use serde_json::{Value, json};

fn flexcore(server: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flexcore"))
        .args(args)
        .env("FLEXCORE_SERVER", server)
        .output()
        .unwrap()
}

async fn cli(server: &str, args: &[&str]) -> Output {
    let server = server.to_owned();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        flexcore(&server, &args)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_users_read_model_serves_queries_and_rebuilds_blue_green() {
    let data = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", data.path().join("flexcore.db").display());
    let server = Server::start_with(data.path(), &url).await;
    let http = reqwest::Client::new();
    let mut last = 0;
    for i in 0..40 {
        let outcome: Value = http
            .post(format!("{}/v1/commands/create_user", server.base))
            .json(&json!({"email": format!("reader{i}@example.com")}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        last = outcome["events"][0]["global_position"].as_u64().unwrap();
    }

    // Read-your-writes through the header.
    let page: Value = http
        .get(format!(
            "{}/v1/queries/list_users?page_size=10&email_contains=reader3",
            server.base
        ))
        .header("FlexCore-Min-Position", last.to_string())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["total"], 11, "reader3 and reader30..39: {page}");
    let bad = http
        .get(format!("{}/v1/queries/list_users", server.base))
        .header("FlexCore-Min-Position", "soon")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    let status = cli(&server.base, &["projections", "status", "--json"]).await;
    assert_eq!(status.status.code(), Some(0), "{status:?}");
    let users: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(users["name"], "users");
    assert_eq!(users["state"], "live");
    assert_eq!(users["live"]["number"], 1);
    let text = cli(&server.base, &["projections", "status"]).await;
    assert!(String::from_utf8_lossy(&text.stdout).contains("users"));

    // The rebuild runs beside the live model while queries keep answering in full.
    let base = server.base.clone();
    let rebuild =
        tokio::spawn(
            async move { cli(&base, &["projections", "rebuild", "users", "--json"]).await },
        );
    while !rebuild.is_finished() {
        // min_position bypasses the query cache: every answer comes from the live model.
        let page = server
            .get_json("/v1/queries/list_users?min_position=1")
            .await;
        assert_eq!(page["total"], 40, "a query saw a half-built model: {page}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let rebuilt = rebuild.await.unwrap();
    assert_eq!(rebuilt.status.code(), Some(0), "{rebuilt:?}");
    let done: Value = serde_json::from_slice(&rebuilt.stdout).unwrap();
    assert_eq!(done["live"]["number"], 2);
    assert_eq!(done["state"], "live");

    let unknown = cli(&server.base, &["projections", "rebuild", "nope"]).await;
    assert_eq!(unknown.status.code(), Some(1), "a refused request exits 1");
    // The welcome notifier, a durable consumer, queued one notification per user.
    let mut welcome = Value::Null;
    for _ in 0..300 {
        let subscriptions = cli(&server.base, &["subscriptions", "list", "--json"]).await;
        assert_eq!(subscriptions.status.code(), Some(0), "{subscriptions:?}");
        welcome = serde_json::from_slice(&subscriptions.stdout).unwrap();
        if welcome["position"].as_u64().unwrap_or(0) > last {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(welcome["consumer"], "welcome");
    assert_eq!(welcome["parked"], 0);
    let notices = server
        .get_json("/v1/events?type_prefix=notification.&limit=1000")
        .await;
    assert_eq!(notices["events"].as_array().unwrap().len(), 40, "{notices}");
    let letters = cli(
        &server.base,
        &["subscriptions", "dead-letters", "list", "welcome"],
    )
    .await;
    assert_eq!(letters.status.code(), Some(0), "{letters:?}");
    assert!(String::from_utf8_lossy(&letters.stdout).contains("no parked events"));

    // A plain query goes through the query cache (counted below).
    let page = server.get_json("/v1/queries/list_users").await;
    assert_eq!(page["total"], 40, "{page}");
    let metrics = http
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("flexcore_projection_lag{projection=\"users\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("flexcore_query_cache_total"), "{metrics}");
}

/// The query cache runs only when a loaded module declares a cache policy: without one (the
/// Python module declares none) it is not opened, so a configured Redis is not even contacted.
#[tokio::test]
async fn the_query_cache_is_opened_only_when_a_module_declares_a_policy() {
    use flexcore::readside::ReadSide;
    use flexcore_app::module::{DomainModule, Modules};
    let data = tempfile::tempdir().unwrap();
    // Nothing listens on port 1: opening this cache would log that Redis does not answer.
    let unreachable_cache = Some("redis://127.0.0.1:1/?prefix=never:");
    let sample: Vec<Arc<dyn DomainModule>> = vec![Arc::new(flexcore_sample_users::UsersModule)];
    for (modules, cache_url, opened) in [
        (sample.clone(), None, true),
        (Vec::new(), None, false),
        (Vec::new(), unreachable_cache, false),
    ] {
        let url = format!(
            "sqlite://{}",
            data.path()
                .join(format!("{}-{}.db", modules.len(), cache_url.is_some()))
                .display()
        );
        let store = flexcore::server::open_store(&url).await.unwrap();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let declared = Modules::new(modules.clone()).declare().unwrap();
        let read_side = ReadSide::start(&url, cache_url, store, declared, stopped)
            .await
            .unwrap();
        assert_eq!(
            read_side.cache.is_some(),
            opened,
            "{} modules, cache {cache_url:?}",
            modules.len()
        );
        let _ = stop.send(true);
    }
}
