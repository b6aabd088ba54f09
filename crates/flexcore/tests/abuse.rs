//! The abuse suite (issue 14, item 9): a real `flexcore serve` with authentication, roles and
//! rate limits, attacked through its gateways. Every attack gets the right answer, writes
//! nothing, and leaves the server healthy and serving an honest client afterwards.

mod common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::Server;
use serde_json::{Value, json};

const SECRET: &str = "the abuse suite's HS256 secret, 32+ bytes";

const CONFIG: &str = r#"
max_body_bytes = 65536

[roles.writer]
commands = ["create_user"]
streams_read = ["user-*"]
streams_append = ["user-*"]

[roles.reader]
queries = ["*"]
streams_read = ["user-*"]

[rate_limit.commands]
per_second = 5
burst = 20
"#;

fn mint(sub: &str, roles: &str) -> String {
    common::mint(SECRET, sub, roles, &[])
}

/// The token's header and claims, edited, re-encoded with the original signature.
fn tampered(token: &str, edit: impl Fn(&mut Value, &mut Value)) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let decode = |part: &str| -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    };
    let (mut header, mut claims) = (decode(parts[0]), decode(parts[1]));
    edit(&mut header, &mut claims);
    let encode = |value: &Value| URL_SAFE_NO_PAD.encode(value.to_string());
    format!("{}.{}.{}", encode(&header), encode(&claims), parts[2])
}

struct Attack {
    server: Server,
    client: reqwest::Client,
}

impl Attack {
    async fn start() -> (Self, tempfile::TempDir) {
        let data = tempfile::tempdir().unwrap();
        let server = Server::start_secured(data.path(), SECRET, CONFIG, &[]).await;
        let attack = Self {
            server,
            client: reqwest::Client::new(),
        };
        (attack, data)
    }

    async fn post(&self, path: &str, token: Option<&str>, body: String) -> (u16, Value) {
        let mut request = self
            .client
            .post(format!("{}{path}", self.server.base))
            .header("content-type", "application/json")
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn create_user(&self, token: Option<&str>, email: &str) -> u16 {
        let body = json!({"email": email, "profile": {}}).to_string();
        self.post("/v1/commands/create_user", token, body).await.0
    }

    /// How many events the log holds (read with a token that sees everything it may).
    async fn events(&self, token: &str) -> usize {
        let page: Value = self
            .client
            .get(format!("{}/v1/events?limit=10000", self.server.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        page["events"].as_array().map_or(0, Vec::len)
    }

    /// The server is alive, and an honest writer is still served.
    async fn assert_healthy(&self, writer: &str, email: &str) {
        let health = self
            .client
            .get(format!("{}/health", self.server.base))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), 200);
        assert_eq!(
            self.create_user(Some(writer), email).await,
            200,
            "an honest client"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tokens_are_refused_and_write_nothing() {
    let (attack, _data) = Attack::start().await;
    let writer = mint("ann", "writer");
    let reader = mint("rob", "reader");
    let forged_secret = common::mint("another secret of at least 32 bytes!", "ann", "writer", &[]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let forgeries = [
        ("wrong signature", forged_secret),
        ("alg none", {
            let none = tampered(&writer, |header, _| header["alg"] = json!("none"));
            format!("{}.", none.rsplit_once('.').unwrap().0)
        }),
        (
            "alg RS256 on an HS256 token",
            tampered(&writer, |h, _| h["alg"] = json!("RS256")),
        ),
        (
            "roles escalated under the signature",
            tampered(&writer, |_, c| c["roles"] = json!(["admin", "writer"])),
        ),
        (
            "expired",
            tampered(&writer, |_, c| c["exp"] = json!(now - 3600)),
        ),
        (
            "not yet valid",
            tampered(&writer, |_, c| c["nbf"] = json!(now + 3600)),
        ),
        ("garbage", "a.b.c".to_owned()),
    ];
    for (what, token) in &forgeries {
        let status = attack
            .create_user(Some(token), &format!("{}@forged.io", what.len()))
            .await;
        assert_eq!(status, 401, "{what}");
    }
    assert_eq!(attack.events(&reader).await, 0, "nothing was written");
    attack.assert_healthy(&writer, "honest-1@b.io").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_audience_and_issuer_are_refused() {
    let data = tempfile::tempdir().unwrap();
    let addressed = [
        ("FLEXCORE_JWT_ISSUER", "https://issuer.test"),
        ("FLEXCORE_JWT_AUDIENCE", "flexcore"),
    ];
    let server = Server::start_secured(data.path(), SECRET, "", &addressed).await;
    let client = reqwest::Client::new();
    let ask = |token: String| {
        client
            .get(format!("{}/v1/events", server.base))
            .bearer_auth(token)
            .send()
    };
    // Minted with the server's issuer and audience, then re-addressed.
    let env_mint = |issuer: &str, audience: &str| {
        let env = [
            ("FLEXCORE_JWT_ISSUER", issuer),
            ("FLEXCORE_JWT_AUDIENCE", audience),
        ];
        common::mint(SECRET, "ann", "x", &env)
    };
    let forbidden_but_authenticated = ask(env_mint("https://issuer.test", "flexcore"))
        .await
        .unwrap();
    assert_eq!(
        forbidden_but_authenticated.status(),
        403,
        "authenticated; role x reads nothing"
    );
    assert_eq!(
        ask(env_mint("https://evil.test", "flexcore"))
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        ask(env_mint("https://issuer.test", "someone-else"))
            .await
            .unwrap()
            .status(),
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_escalation_and_pattern_escapes_are_forbidden() {
    let (attack, _data) = Attack::start().await;
    let writer = mint("ann", "writer");
    let reader = mint("rob", "reader");
    let event = json!({"events": [{"event_type": "x", "data": {}}]}).to_string();
    let attempts = [
        (
            "/v1/commands/change_email",
            json!({"user_id": "u", "email": "x@b.io"}).to_string(),
        ),
        ("/v1/streams/user", event.clone()),
        ("/v1/streams/users", event.clone()),
        ("/v1/streams/admin-user-1", event.clone()),
        ("/v1/projections/users/rebuild", String::new()),
    ];
    for (path, body) in attempts {
        let (status, answer) = attack.post(path, Some(&writer), body).await;
        assert_eq!(status, 403, "{path}: {answer}");
        assert_eq!(answer["code"], "forbidden");
    }
    let (status, _) = attack
        .post(
            "/v1/commands/create_user",
            Some(&reader),
            json!({"email": "r@b.io"}).to_string(),
        )
        .await;
    assert_eq!(status, 403, "a reader sends no command");
    assert_eq!(attack.events(&reader).await, 0, "nothing was written");
    attack.assert_healthy(&writer, "honest-2@b.io").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_deep_and_header_flooded_requests_are_refused() {
    let (attack, _data) = Attack::start().await;
    let writer = mint("ann", "writer");
    let reader = mint("rob", "reader");
    let huge = json!({"email": "big@b.io", "profile": {"bio": "x".repeat(100_000)}}).to_string();
    let (status, answer) = attack
        .post("/v1/commands/create_user", Some(&writer), huge)
        .await;
    assert_eq!(status, 413, "{answer}");
    let deep = format!(
        "{{\"email\":\"d@b.io\",\"profile\":{}1{}}}",
        "[".repeat(500),
        "]".repeat(500)
    );
    let (status, answer) = attack
        .post("/v1/commands/create_user", Some(&writer), deep)
        .await;
    assert_eq!(status, 400, "{answer}");
    let mut flood = attack
        .client
        .post(format!("{}/v1/commands/create_user", attack.server.base))
        .bearer_auth(&writer)
        .header("content-type", "application/json")
        .body(json!({"email": "flood@b.io"}).to_string());
    for i in 0..200 {
        flood = flood.header(format!("x-flood-{i}"), "y".repeat(100));
    }
    let flooded = flood.send().await.map(|r| r.status().as_u16());
    assert!(
        matches!(flooded, Ok(431) | Ok(400) | Err(_)),
        "a header flood is refused: {flooded:?}"
    );
    let giant_header = attack
        .client
        .get(format!("{}/v1/events", attack.server.base))
        .bearer_auth(&reader)
        .header("x-giant", "z".repeat(1024 * 1024))
        .send()
        .await
        .map(|r| r.status().as_u16());
    assert!(
        matches!(giant_header, Ok(431) | Ok(400) | Err(_)),
        "a 1 MiB header is refused: {giant_header:?}"
    );
    assert_eq!(attack.events(&reader).await, 0, "nothing was written");
    attack.assert_healthy(&writer, "honest-3@b.io").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_principal_does_not_starve_another() {
    let (attack, _data) = Attack::start().await;
    let flooder = mint("flood", "writer");
    let honest = mint("ann", "writer");
    let mut limited = 0;
    let mut accepted = 0;
    for i in 0..60 {
        match attack
            .create_user(Some(&flooder), &format!("f{i}@b.io"))
            .await
        {
            200 => accepted += 1,
            429 => limited += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert!(limited > 0, "the flood hit its bucket");
    assert!((20..60).contains(&accepted), "{accepted} accepted");
    attack.assert_healthy(&honest, "honest-4@b.io").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_connections_are_capped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let data = tempfile::tempdir().unwrap();
    let limits = [
        ("FLEXCORE_HEADER_READ_TIMEOUT_MS", "500"),
        ("FLEXCORE_MAX_CONNECTIONS", "8"),
    ];
    let server = Server::start_secured(data.path(), SECRET, "", &limits).await;
    let addr = server.base.trim_start_matches("http://").to_owned();
    // Slowloris: a request head that never ends is cut off after the timeout.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n")
        .await
        .unwrap();
    let mut buffer = Vec::new();
    let cut = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        slow.read_to_end(&mut buffer),
    )
    .await;
    assert!(cut.is_ok(), "the server closed the slow connection");
    // Idle connections fill the cap; one more is closed at once, and the cap frees up after.
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let mut extra = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let _ = extra
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let refused = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        extra.read_to_end(&mut answer),
    )
    .await;
    assert!(
        matches!(refused, Ok(Ok(0)) | Ok(Err(_))),
        "a connection over the cap is closed unanswered: {refused:?} {}",
        String::from_utf8_lossy(&answer)
    );
    drop(idle);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let health = reqwest::get(format!("{}/health", server.base)).await;
        if matches!(&health, Ok(r) if r.status() == 200) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server serves again: {health:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
