//! A service's real binary as a child process (for tests that SIGKILL it), configured only by
//! `BANK_*` environment variables, reporting its gRPC address from its "started" log line.

use std::{net::SocketAddr, path::PathBuf, process::Stdio, time::Duration};

use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    process::{Child, Command},
};

/// The binary `name` of this workspace in the target directory the running test was built into;
/// built with cargo when it is not there (a test of one crate that starts another crate's binary).
#[must_use]
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    // target/<profile>/deps/<test>-<hash>
    let profile_dir = exe.parent().and_then(std::path::Path::parent).expect("target/<profile>");
    let path = profile_dir.join(name);
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let status = std::process::Command::new(cargo)
            .args(["build", "--bin", name])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build --bin {name} failed");
    }
    path
}

/// A running service process; killed when dropped.
#[derive(Debug)]
pub struct ServiceProcess {
    child: Child,
    /// Its gRPC address.
    pub addr: SocketAddr,
}

impl ServiceProcess {
    /// Starts `binary` with exactly `env` (plus listeners on port 0 and no config files) and waits
    /// for its "started" line.
    pub async fn start(binary: &std::path::Path, env: &[(String, String)]) -> Self {
        let mut command = Command::new(binary);
        command
            .env_clear()
            .env("BANK_CONFIG_DIR", "/nonexistent-config-dir")
            .env("BANK_SERVER__LISTEN_ADDR", "127.0.0.1:0")
            .env("BANK_SERVER__ADMIN_ADDR", "127.0.0.1:0");
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the service binary");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let addr = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.expect("read its output") {
                if let Ok((message, grpc)) = serde_json_line(&line)
                    && message == "started"
                {
                    return grpc;
                }
            }
            panic!("{} exited before starting", binary.display());
        })
        .await
        .expect("the service starts within 60 s");
        // Keep draining its output so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self { child, addr: addr.parse().expect("a socket address") }
    }

    /// SIGKILL, and wait for it to be gone.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("kill");
    }

    /// `http://<addr>`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A channel to it.
    pub async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(self.url())
            .expect("endpoint")
            .connect()
            .await
            .expect("connect")
    }
}

/// (`message`, `grpc`) of a JSON log line.
fn serde_json_line(line: &str) -> Result<(String, String), ()> {
    let field = |name: &str| -> Option<String> {
        let key = format!("\"{name}\":\"");
        let start = line.find(&key)? + key.len();
        let end = line[start..].find('"')? + start;
        Some(line[start..end].to_owned())
    };
    match (field("message"), field("grpc")) {
        (Some(m), Some(g)) => Ok((m, g)),
        _ => Err(()),
    }
}
