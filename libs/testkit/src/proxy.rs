//! A TCP proxy a test can cut and restore, to make a dependency (PostgreSQL, Redis) unreachable
//! without stopping the shared server other tests use — or stall, to make calls hang (a request
//! that reaches the server whose answer never comes back, or one that never arrives).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Forwards connections from [`TcpProxy::addr`] to a target while up; while down it refuses new
/// connections (accepts and closes them at once) and has cut every existing one.
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
}

/// What a stalled proxy drops (connections stay open; bytes are read and discarded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stall {
    /// Requests reach the target, its answers are dropped: the effect happens, the caller hangs.
    Responses,
    /// Nothing is forwarded either way: the caller hangs and the target sees nothing.
    Both,
}

#[derive(Debug)]
struct State {
    up: bool,
    stall: Option<Stall>,
    /// Cancelled to cut every connection opened since the last cut.
    generation: CancellationToken,
}

impl TcpProxy {
    /// Starts forwarding from a fresh loopback port to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let state =
            Arc::new(Mutex::new(State { up: true, stall: None, generation: CancellationToken::new() }));
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, target, state.clone(), stop.clone()));
        Self { addr, state, stop }
    }

    /// Where clients connect.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts every open connection and refuses new ones.
    pub fn cut(&self) {
        let mut state = self.state.lock().expect("proxy state");
        state.up = false;
        state.generation.cancel();
        state.generation = CancellationToken::new();
    }

    /// Forwards new connections again (and ends a stall).
    pub fn restore(&self) {
        let mut state = self.state.lock().expect("proxy state");
        state.up = true;
        state.stall = None;
    }

    /// Keeps connections (existing and new) open but drops what `stall` says from now on.
    pub fn stall(&self, stall: Stall) {
        self.state.lock().expect("proxy state").stall = Some(stall);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.cut();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((inbound, _)) = accepted else { continue };
        let (up, generation) = {
            let state = state.lock().expect("proxy state");
            (state.up, state.generation.clone())
        };
        if !up {
            drop(inbound);
            continue;
        }
        let state = state.clone();
        tokio::spawn(async move {
            let Ok(outbound) = TcpStream::connect(target).await else { return };
            let (client_read, client_write) = inbound.into_split();
            let (server_read, server_write) = outbound.into_split();
            let requests = pump(client_read, server_write, state.clone(), &[Stall::Both]);
            let responses = pump(server_read, client_write, state, &[Stall::Responses, Stall::Both]);
            tokio::select! {
                () = generation.cancelled() => {}
                () = requests => {}
                () = responses => {}
            }
        });
    }
}

/// Copies `from` to `to` until either side closes, discarding the bytes while the proxy is in one
/// of the `dropped_in` stalls.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    state: Arc<Mutex<State>>,
    dropped_in: &[Stall],
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buf = vec![0_u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let stall = state.lock().expect("proxy state").stall;
        if stall.is_some_and(|s| dropped_in.contains(&s)) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
