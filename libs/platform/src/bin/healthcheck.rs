//! `healthcheck`: the container image's own probe, for Docker `HEALTHCHECK` and compose health
//! checks. The image has no shell and no curl, so this asks an admin port with plain `std` and exits
//! 0 on `200 OK`, 1 otherwise. Kubernetes does not need it: the chart uses native gRPC and HTTP
//! probes.
//!
//! ```text
//! healthcheck [ADDR [PATH]]     defaults: 127.0.0.1:9090 /health/ready
//! ```

use std::{
    io::{Read as _, Write as _},
    net::{TcpStream, ToSocketAddrs as _},
    process::ExitCode,
    time::Duration,
};

const TIMEOUT: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:9090".to_owned());
    let path = args.next().unwrap_or_else(|| "/health/ready".to_owned());
    match probe(&addr, &path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("healthcheck: http://{addr}{path}: {why}");
            ExitCode::FAILURE
        }
    }
}

fn probe(addr: &str, path: &str) -> Result<(), String> {
    let target =
        addr.to_socket_addrs().map_err(|e| e.to_string())?.next().ok_or_else(|| "no address".to_owned())?;
    let mut stream = TcpStream::connect_timeout(&target, TIMEOUT).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").map_err(|e| e.to_string())?;
    let mut head = [0_u8; 64];
    let read = stream.read(&mut head).map_err(|e| e.to_string())?;
    let line = String::from_utf8_lossy(head.get(..read).unwrap_or_default());
    match line.split_whitespace().nth(1) {
        Some("200") => Ok(()),
        Some(status) => Err(format!("HTTP {status}")),
        None => Err("no HTTP status line".to_owned()),
    }
}
