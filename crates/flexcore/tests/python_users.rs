//! `examples/python-users` end to end: the real binary with the example's config, driven over
//! HTTP; then hot reload of a copy of the example (a changed handler takes over while commands
//! keep flowing; a broken one leaves the previous version running and is reported); and two
//! servers on one PostgreSQL schema racing one email address: exactly one user gets it.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::Server;
use serde_json::{Value, json};

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/python-users")
}

async fn start(config: &Path, data: &Path) -> Server {
    let url = format!("sqlite://{}", data.join("flexcore.db").display());
    let config = config.display().to_string();
    Server::start_with_env(data, &url, &[("FLEXCORE_CONFIG", config.as_str())]).await
}

async fn command(
    client: &reqwest::Client,
    server: &Server,
    name: &str,
    body: Value,
) -> (u16, Value) {
    let r = client
        .post(format!("{}/v1/commands/{name}", server.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn query(
    client: &reqwest::Client,
    server: &Server,
    name: &str,
    params: Value,
) -> (u16, Value) {
    let r = client
        .post(format!("{}/v1/queries/{name}", server.base))
        .json(&params)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn get(client: &reqwest::Client, server: &Server, path: &str) -> Value {
    let r = client
        .get(format!("{}{path}", server.base))
        .send()
        .await
        .unwrap();
    r.json().await.unwrap()
}

/// Polls `check` until it returns `Some`, for at most 15 s.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The text field `field` of each object in the JSON array `items`.
fn texts<'a>(items: &'a Value, field: &str) -> Vec<&'a str> {
    items
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {items}"))
        .iter()
        .map(|item| {
            item[field]
                .as_str()
                .unwrap_or_else(|| panic!("no {field} in {item}"))
        })
        .collect()
}

fn user_id(outcome: &Value) -> String {
    outcome["stream_id"]
        .as_str()
        .and_then(|s| s.strip_prefix("user-"))
        .unwrap_or_else(|| panic!("no user stream in {outcome}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_python_users_example_serves_the_sample_domain() {
    let data = tempfile::tempdir().unwrap();
    let server = start(&example_dir().join("flexcore.toml"), data.path()).await;
    let client = reqwest::Client::new();

    let health = get(&client, &server, "/health").await;
    assert_eq!(health["python"]["ok"], true, "{health}");
    assert_eq!(health["python"]["generation"], 1, "{health}");

    let (status, created) = command(
        &client,
        &server,
        "create_user",
        json!({"email": " Ann@Example.COM", "profile": {"name": "Ann"}}),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["version"], 0);
    assert_eq!(created["events"].as_array().unwrap().len(), 1, "{created}");
    let ann = user_id(&created);

    // Validation (422 validation_failed) and uniqueness (409 conflict), with the handler's
    // message.
    for (body, message, status_wanted, code) in [
        (
            json!({"email": "not-an-email"}),
            "missing '@'",
            422,
            "validation_failed",
        ),
        (
            json!({"profile": {}}),
            "email is required",
            422,
            "validation_failed",
        ),
        (
            json!({"email": "ann@example.com"}),
            "already in use [email_taken]",
            409,
            "conflict",
        ),
        (
            json!({"email": "x@example.com", "user_id": "mine"}),
            "assigned by the server",
            422,
            "validation_failed",
        ),
    ] {
        let (status, problem) = command(&client, &server, "create_user", body.clone()).await;
        assert_eq!(status, status_wanted, "{body}: {problem}");
        assert_eq!(problem["code"], code);
        assert!(
            problem["detail"].as_str().unwrap().contains(message),
            "{problem}"
        );
    }

    // The user.created handler feeds the read model behind get_user.
    let user = eventually("get_user", || async {
        let (status, user) = query(&client, &server, "get_user", json!({"user_id": ann})).await;
        (status == 200).then_some(user)
    })
    .await;
    assert_eq!(user["email"], "ann@example.com");

    // The durable welcome consumer queued exactly one message for Ann in the spool.
    let spool = data.path().join("data").join("welcome.spool");
    let line = eventually("the welcome message", || async {
        std::fs::read_to_string(&spool)
            .ok()
            .filter(|s| !s.is_empty())
    })
    .await;
    let message: Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert_eq!(message["to"], "ann@example.com");
    let subscriptions = get(&client, &server, "/v1/subscriptions").await;
    assert_eq!(
        subscriptions[0]["consumer"], "python:welcome",
        "{subscriptions}"
    );
    assert_eq!(subscriptions[0]["parked"], 0);
    assert_eq!(user["profile"], json!({"name": "Ann"}));

    let (status, changed) = command(
        &client,
        &server,
        "change_email",
        json!({"user_id": ann, "email": "ann@example.org"}),
    )
    .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["version"], 1);
    let (status, same) = command(
        &client,
        &server,
        "change_email",
        json!({"user_id": ann, "email": "ANN@example.org"}),
    )
    .await;
    assert_eq!((status, same["version"].clone()), (200, json!(1)), "{same}");
    assert_eq!(same["events"], json!([]));
    let (status, problem) = command(
        &client,
        &server,
        "change_email",
        json!({"user_id": "0190f3a0-0000-7000-8000-000000000000", "email": "z@example.com"}),
    )
    .await;
    assert_eq!(status, 404, "{problem}");

    // The change released the old address in the same append: it is free at once.
    let (status, problem) = command(
        &client,
        &server,
        "create_user",
        json!({"email": "ann@example.com"}),
    )
    .await;
    assert_eq!(status, 200, "{problem}");
    let reservation = get(&client, &server, "/v1/streams/email-ann@example.com").await;
    assert_eq!(
        texts(&reservation["events"], "event_type"),
        ["email.reserved", "email.released", "email.reserved"]
    );
    let users = eventually("two users", || async {
        let (_, list) = query(&client, &server, "list_users", json!({})).await;
        (list["users"].as_array().map(Vec::len) == Some(2)).then_some(list)
    })
    .await;
    assert_eq!(
        texts(&users["users"], "email"),
        ["ann@example.com", "ann@example.org"]
    );

    // The stream holds what Python returned.
    let stream = get(&client, &server, &format!("/v1/streams/user-{ann}")).await;
    assert_eq!(
        texts(&stream["events"], "event_type"),
        ["user.created", "user.email_changed"]
    );
    assert_eq!(stream["events"][1]["data"]["old_email"], "ann@example.com");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_changed_module_is_reloaded_and_a_broken_one_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    for file in ["flexcore.toml", "users.py"] {
        std::fs::copy(example_dir().join(file), dir.path().join(file)).unwrap();
    }
    let module = dir.path().join("users.py");
    let original = std::fs::read_to_string(&module).unwrap();
    let server = start(&dir.path().join("flexcore.toml"), dir.path()).await;
    let client = reqwest::Client::new();

    let (status, created) = command(
        &client,
        &server,
        "create_user",
        json!({"email": "bo@example.com"}),
    )
    .await;
    assert_eq!(status, 200, "{created}");

    // Commands keep flowing through every reload below; none may fail.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (client, base, stop) = (client.clone(), server.base.clone(), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut sent = 0;
            while !stop.load(Ordering::Relaxed) {
                let r = client
                    .post(format!("{base}/v1/commands/create_user"))
                    .json(&json!({"email": format!("load{sent}@example.com")}))
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                assert_eq!(status, 200, "{}", r.text().await.unwrap());
                sent += 1;
            }
            sent
        })
    };

    // A changed handler takes over; the new version's read model is rebuilt from the log.
    let changed = original.replace("is already in use", "is taken").replace(
        "return {\"users\": sorted(",
        "return {\"reloaded\": True, \"users\": sorted(",
    );
    assert_ne!(changed, original);
    std::fs::write(&module, &changed).unwrap();
    eventually("the reload", || async {
        let health = get(&client, &server, "/health").await;
        (health["python"]["generation"] == 2).then_some(())
    })
    .await;
    let (status, problem) = command(
        &client,
        &server,
        "create_user",
        json!({"email": "bo@example.com"}),
    )
    .await;
    assert_eq!(status, 409);
    assert!(
        problem["detail"].as_str().unwrap().contains("is taken"),
        "{problem}"
    );
    let (_, list) = query(&client, &server, "list_users", json!({})).await;
    assert_eq!(list["reloaded"], true, "{list}");
    assert!(
        list["users"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["email"] == "bo@example.com"),
        "{list}"
    );

    // A broken module: the previous version keeps answering and /health says why.
    std::fs::write(&module, format!("{changed}\ndef broken(:\n")).unwrap();
    let health = eventually("the error report", || async {
        let health = get(&client, &server, "/health").await;
        (health["python"]["ok"] == false).then_some(health)
    })
    .await;
    assert!(
        health["python"]["error"]
            .as_str()
            .unwrap()
            .contains("SyntaxError"),
        "{health}"
    );
    assert_eq!(health["python"]["generation"], 2);
    let ready = get(&client, &server, "/ready").await;
    assert_eq!(ready["python"]["ok"], false, "{ready}");
    let (status, problem) = command(
        &client,
        &server,
        "create_user",
        json!({"email": "bo@example.com"}),
    )
    .await;
    assert_eq!(status, 409);
    assert!(
        problem["detail"].as_str().unwrap().contains("is taken"),
        "{problem}"
    );

    // Fixed again: the error clears.
    std::fs::write(&module, &original).unwrap();
    eventually("the recovery", || async {
        let health = get(&client, &server, "/health").await;
        (health["python"]["ok"] == true && health["python"]["generation"] == 3).then_some(())
    })
    .await;
    let (status, problem) = command(
        &client,
        &server,
        "create_user",
        json!({"email": "bo@example.com"}),
    )
    .await;
    assert_eq!(status, 409);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("is already in use"),
        "{problem}"
    );

    stop.store(true, Ordering::Relaxed);
    let sent = traffic.await.unwrap();
    assert!(sent > 0);
}

/// Sends `create_user` for one address from `racers` clients at once, alternating between the
/// servers; the answers' statuses.
async fn race_for_one_email(servers: &[&Server], racers: usize, email: &str) -> Vec<u16> {
    let client = reqwest::Client::new();
    let start = Arc::new(tokio::sync::Barrier::new(racers));
    let tasks: Vec<_> = (0..racers)
        .map(|i| {
            let url = format!(
                "{}/v1/commands/create_user",
                servers[i % servers.len()].base
            );
            let (client, start, email) = (client.clone(), Arc::clone(&start), email.to_owned());
            tokio::spawn(async move {
                start.wait().await;
                let answer = client
                    .post(url)
                    .json(&json!({"email": email}))
                    .send()
                    .await
                    .unwrap();
                let status = answer.status().as_u16();
                let body: Value = answer.json().await.unwrap();
                assert!(
                    status == 200 || (status == 409 && body["code"] == "conflict"),
                    "{status}: {body}"
                );
                status
            })
        })
        .collect();
    let mut statuses = Vec::with_capacity(racers);
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_on_one_postgres_give_a_raced_email_to_exactly_one_user() {
    use flexcore_test_support::services;
    let Some(base) = services::postgres_url() else {
        return;
    };
    let schema = services::unique_name("fc_py_email_race");
    let url = services::with_query_param(&base, "schema", &schema);
    let config = example_dir().join("flexcore.toml").display().to_string();
    let env = [("FLEXCORE_CONFIG", config.as_str())];
    let (dir_one, dir_two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // One after the other: the first creates the schema.
    let one = Server::start_with_env(dir_one.path(), &url, &env).await;
    let two = Server::start_with_env(dir_two.path(), &url, &env).await;

    const RACERS: usize = 16;
    let statuses = race_for_one_email(&[&one, &two], RACERS, "race@example.com").await;
    let won = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(won, 1, "exactly one winner: {statuses:?}");
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        RACERS - 1,
        "{statuses:?}"
    );

    // The shared log, read through either server, holds one user and one reservation.
    let client = reqwest::Client::new();
    for server in [&one, &two] {
        let created = get(
            &client,
            server,
            "/v1/events?type_prefix=user.created&limit=1000",
        )
        .await;
        let created = created["events"].as_array().unwrap();
        assert_eq!(created.len(), 1, "{created:?}");
        assert_eq!(created[0]["data"]["email"], "race@example.com");
        let reservation = get(&client, server, "/v1/streams/email-race@example.com").await;
        assert_eq!(
            reservation["events"].as_array().unwrap().len(),
            1,
            "{reservation}"
        );
        assert_eq!(
            reservation["events"][0]["data"]["user_id"],
            created[0]["data"]["user_id"]
        );
    }

    drop((one, two));
    flexcore_store_postgres::drop_schema(&base, &schema)
        .await
        .unwrap();
}
