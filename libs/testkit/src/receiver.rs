//! A real HTTP server on 127.0.0.1 (port 0) that records webhook POSTs and answers them with a
//! scripted sequence of status codes (then 200), for tests of webhook delivery.

use std::{sync::Arc, time::Duration};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::TcpListener,
    sync::Mutex,
};

/// One request received.
#[derive(Debug, Clone)]
pub struct Received {
    /// Path and query.
    pub path: String,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: String,
    /// When it arrived.
    pub at: tokio::time::Instant,
    /// The status answered.
    pub answered: u16,
}

impl Received {
    /// A header's value.
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Default)]
struct State {
    received: Vec<Received>,
    script: Vec<u16>,
}

/// The receiver.
#[derive(Debug, Clone)]
pub struct WebhookReceiver {
    addr: std::net::SocketAddr,
    state: Arc<Mutex<State>>,
}

impl WebhookReceiver {
    /// Starts listening; the first requests are answered with `script` in order, the rest with 200.
    pub async fn start(script: &[u16]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the receiver");
        let addr = listener.local_addr().expect("address");
        let state = Arc::new(Mutex::new(State {
            received: Vec::new(),
            script: script.iter().rev().copied().collect(),
        }));
        let shared = Arc::clone(&state);
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let state = Arc::clone(&shared);
                tokio::spawn(async move {
                    let _ = serve(socket, state).await;
                });
            }
        });
        Self { addr, state }
    }

    /// `http://127.0.0.1:<port><path>`.
    #[must_use]
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Everything received so far.
    pub async fn received(&self) -> Vec<Received> {
        self.state.lock().await.received.clone()
    }

    /// Waits (up to `within`) until at least `n` requests arrived; answers them all.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let received = self.received().await;
            if received.len() >= n || tokio::time::Instant::now() >= deadline {
                return received;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

async fn serve(socket: tokio::net::TcpStream, state: Arc<Mutex<State>>) -> std::io::Result<()> {
    let (read, mut write) = socket.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let mut headers = Vec::new();
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).await?;
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let name = name.trim().to_ascii_lowercase();
                let value = value.trim().to_owned();
                if name == "content-length" {
                    length = value.parse().unwrap_or(0);
                }
                headers.push((name, value));
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body).await?;
        let status = {
            let mut state = state.lock().await;
            let status = state.script.pop().unwrap_or(200);
            state.received.push(Received {
                path,
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
                at: tokio::time::Instant::now(),
                answered: status,
            });
            status
        };
        let text = format!("status {status}");
        let response = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{text}",
            text.len()
        );
        write.write_all(response.as_bytes()).await?;
    }
}
