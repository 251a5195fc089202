//! A real SMTP server on 127.0.0.1 (port 0) that keeps what it receives, for tests of email: the
//! service under test talks SMTP to it over TCP exactly as it would to a relay.

use std::{sync::Arc, time::Duration};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::TcpListener,
    sync::Mutex,
};

/// One received message.
#[derive(Debug, Clone)]
pub struct Mail {
    /// `MAIL FROM`.
    pub from: String,
    /// `RCPT TO`, in order.
    pub to: Vec<String>,
    /// The raw message (headers and body, dot-unstuffed, CRLF line ends).
    pub data: String,
}

impl Mail {
    /// The `Subject` header (unfolded, as sent).
    #[must_use]
    pub fn subject(&self) -> String {
        self.header("Subject").unwrap_or_default()
    }

    /// A header's value.
    #[must_use]
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.data.split("\r\n\r\n").next().unwrap_or_default();
        let prefix = format!("{}:", name.to_ascii_lowercase());
        head.split("\r\n")
            .find(|line| line.to_ascii_lowercase().starts_with(&prefix))
            .map(|line| line[prefix.len()..].trim().to_owned())
    }

    /// The message with quoted-printable soft line breaks and `=3D` undone (enough to read links).
    #[must_use]
    pub fn text(&self) -> String {
        self.data.replace("=\r\n", "").replace("=3D", "=")
    }
}

#[derive(Debug, Default)]
struct State {
    mails: Vec<Mail>,
    /// Answer the next DATA of this many messages with a temporary failure.
    fail_next: usize,
}

/// The server; dropped with the test.
#[derive(Debug, Clone)]
pub struct SmtpSink {
    addr: std::net::SocketAddr,
    state: Arc<Mutex<State>>,
}

impl SmtpSink {
    /// Starts listening.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the SMTP sink");
        let addr = listener.local_addr().expect("address");
        let state = Arc::new(Mutex::new(State::default()));
        let shared = Arc::clone(&state);
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let state = Arc::clone(&shared);
                tokio::spawn(async move {
                    let _ = session(socket, state).await;
                });
            }
        });
        Self { addr, state }
    }

    /// Host port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every message so far.
    pub async fn mails(&self) -> Vec<Mail> {
        self.state.lock().await.mails.clone()
    }

    /// Answer the next `n` messages with `451` (a temporary failure).
    pub async fn fail_next(&self, n: usize) {
        self.state.lock().await.fail_next = n;
    }

    /// Waits (up to `within`) for a message to `to` whose subject contains `subject`.
    pub async fn wait_for(&self, to: &str, subject: &str, within: Duration) -> Option<Mail> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let found = self
                .mails()
                .await
                .into_iter()
                .find(|m| m.to.iter().any(|t| t == to) && m.subject().contains(subject));
            if found.is_some() || tokio::time::Instant::now() >= deadline {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn address(arg: &str) -> String {
    let start = arg.find('<').map_or(0, |i| i + 1);
    let end = arg.rfind('>').unwrap_or(arg.len());
    arg[start..end].to_owned()
}

async fn session(socket: tokio::net::TcpStream, state: Arc<Mutex<State>>) -> std::io::Result<()> {
    let (read, mut write) = socket.into_split();
    let mut lines = BufReader::new(read);
    write.write_all(b"220 sink.test ESMTP\r\n").await?;
    let (mut from, mut to) = (String::new(), Vec::new());
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let command = line.trim_end().to_owned();
        let upper = command.to_ascii_uppercase();
        if upper.starts_with("EHLO") {
            write.write_all(b"250-sink.test\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n").await?;
        } else if upper.starts_with("HELO") {
            write.write_all(b"250 sink.test\r\n").await?;
        } else if upper.starts_with("MAIL FROM:") {
            from = address(&command[10..]);
            to.clear();
            write.write_all(b"250 OK\r\n").await?;
        } else if upper.starts_with("RCPT TO:") {
            to.push(address(&command[8..]));
            write.write_all(b"250 OK\r\n").await?;
        } else if upper == "DATA" {
            write.write_all(b"354 end with .\r\n").await?;
            let mut data = String::new();
            loop {
                line.clear();
                if lines.read_line(&mut line).await? == 0 {
                    return Ok(());
                }
                if line == ".\r\n" || line == ".\n" {
                    break;
                }
                let unstuffed = line.strip_prefix('.').unwrap_or(&line);
                data.push_str(unstuffed.trim_end_matches(['\r', '\n']));
                data.push_str("\r\n");
            }
            let mut state = state.lock().await;
            if state.fail_next > 0 {
                state.fail_next -= 1;
                write.write_all(b"451 try again later\r\n").await?;
            } else {
                state.mails.push(Mail { from: from.clone(), to: to.clone(), data });
                write.write_all(b"250 queued\r\n").await?;
            }
        } else if upper == "QUIT" {
            write.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else if upper == "RSET" || upper == "NOOP" {
            write.write_all(b"250 OK\r\n").await?;
        } else {
            write.write_all(b"502 not implemented\r\n").await?;
        }
    }
}
