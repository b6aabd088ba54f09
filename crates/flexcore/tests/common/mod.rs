//! Starting the real binary for tests.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `flexcore serve` child process on a free port.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:{port}`.
    pub base: String,
    /// `http://127.0.0.1:{port}` of the gRPC gateway.
    #[allow(dead_code)]
    pub grpc: String,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Server {
    /// Starts the server on `store_url` with `data` as working directory; waits for /health.
    #[allow(dead_code)]
    pub async fn start_with(data: &Path, store_url: &str) -> Self {
        Self::start_with_env(data, store_url, &[]).await
    }

    /// Like [`Server::start_with`], with extra environment variables.
    pub async fn start_with_env(data: &Path, store_url: &str, env: &[(&str, &str)]) -> Self {
        Self::start_probed(data, store_url, env, "http", &reqwest::Client::new()).await
    }

    /// Like [`Server::start_with_env`], writing the server's standard output (where embedded
    /// Python handlers `print`) to `stdout`.
    #[allow(dead_code)]
    pub async fn start_with_stdout(
        data: &Path,
        store_url: &str,
        env: &[(&str, &str)],
        stdout: std::fs::File,
    ) -> Self {
        let client = reqwest::Client::new();
        Self::start_writing(data, store_url, env, "http", &client, stdout.into()).await
    }

    /// Like [`Server::start_with_env`] for a server with TLS: `base` is `https://…`, and
    /// `client` (trusting the server's CA, with a client certificate if needed) probes it.
    #[allow(dead_code)]
    pub async fn start_https(
        data: &Path,
        store_url: &str,
        env: &[(&str, &str)],
        client: &reqwest::Client,
    ) -> Self {
        Self::start_probed(data, store_url, env, "https", client).await
    }

    async fn start_probed(
        data: &Path,
        store_url: &str,
        env: &[(&str, &str)],
        scheme: &str,
        client: &reqwest::Client,
    ) -> Self {
        Self::start_writing(data, store_url, env, scheme, client, Stdio::null()).await
    }

    async fn start_writing(
        data: &Path,
        store_url: &str,
        env: &[(&str, &str)],
        scheme: &str,
        client: &reqwest::Client,
        stdout: Stdio,
    ) -> Self {
        let port = free_port();
        let grpc_port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_flexcore"))
            .arg("serve")
            .env("FLEXCORE_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("FLEXCORE_GRPC_ADDR", format!("127.0.0.1:{grpc_port}"))
            .env("FLEXCORE_STORE_URL", store_url)
            .env("FLEXCORE_LOG", "warn")
            .env_remove("FLEXCORE_CONFIG")
            .envs(env.iter().copied())
            .current_dir(data)
            .stdout(stdout)
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let server = Self {
            child,
            base: format!("{scheme}://127.0.0.1:{port}"),
            grpc: format!("http://127.0.0.1:{grpc_port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while client
            .get(format!("{}/health", server.base))
            .send()
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "the server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    /// Kills the server with SIGKILL.
    #[allow(dead_code)]
    pub fn kill_9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Server {
    /// Sends SIGTERM and waits for the exit status.
    #[allow(dead_code)]
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not exit after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Server {
    /// `GET {base}{path}` and its JSON body (panics on a transport or JSON error).
    #[allow(dead_code)]
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        reqwest::get(format!("{}{path}", self.base))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// `POST {base}{path}` with a JSON body: the status and the JSON answer.
    #[allow(dead_code)]
    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let answer = reqwest::Client::new()
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .unwrap();
        (answer.status().as_u16(), answer.json().await.unwrap())
    }
}

impl Server {
    /// `GET {base}{path}` as the holder of `token`: its JSON body.
    #[allow(dead_code)]
    pub async fn get_json_as(&self, token: &str, path: &str) -> serde_json::Value {
        self.request_as(token, reqwest::Method::GET, path, None)
            .await
            .1
    }

    /// `POST {base}{path}` with a JSON body as the holder of `token`: the status and answer.
    #[allow(dead_code)]
    pub async fn post_json_as(
        &self,
        token: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        self.request_as(token, reqwest::Method::POST, path, Some(body))
            .await
    }

    #[allow(dead_code)]
    async fn request_as(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut request = reqwest::Client::new()
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let answer = request.send().await.unwrap();
        (answer.status().as_u16(), answer.json().await.unwrap())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// A server over SQLite in `data` with JWT authentication (`secret`), the settings file
    /// `config` (written to `data/flexcore.toml`) and extra variables.
    #[allow(dead_code)]
    pub async fn start_secured(
        data: &Path,
        secret: &str,
        config: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let file = data.join("flexcore.toml");
        std::fs::write(&file, config).unwrap();
        let file = file.display().to_string();
        let url = format!("sqlite://{}", data.join("db.sqlite").display());
        let mut env = env.to_vec();
        env.extend([
            ("FLEXCORE_JWT_HS256_SECRET", secret),
            ("FLEXCORE_CONFIG", &file),
        ]);
        Self::start_with_env(data, &url, &env).await
    }
}

/// `flexcore token mint --sub <sub> --roles <roles>` with `secret` and extra variables (e.g.
/// the issuer and audience); the token, or the command's output when it fails.
#[allow(dead_code)]
pub fn mint(secret: &str, sub: &str, roles: &str, env: &[(&str, &str)]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_flexcore"))
        .args(["token", "mint", "--sub", sub, "--roles", roles])
        .env_remove("FLEXCORE_CONFIG")
        .env("FLEXCORE_JWT_HS256_SECRET", secret)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}
