//! The real `ledger` binary as an operator runs it: the shared `main` (config, telemetry, signals,
//! exit codes) behaves the same in every service, so one binary stands for all of them here.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use bank_proto::ledger::v1::{GetBalancesRequest, ledger_service_client::LedgerServiceClient};
use bank_testkit::TestDatabase;
use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    process::Command,
};

const BINARY: &str = env!("CARGO_BIN_EXE_ledger");

fn ledger(envs: &[(&str, &str)]) -> Command {
    let mut command = Command::new(BINARY);
    command
        .env_clear()
        .env("BANK_CONFIG_DIR", "/nonexistent-config-dir")
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

#[tokio::test]
async fn traceparent_reaches_the_logs_and_sigterm_ends_with_one_shutdown_complete_and_exit_0() {
    let database = TestDatabase::create().await;
    let mut child = ledger(&[
        ("BANK_DATABASE__URL", database.url()),
        ("BANK_REDIS__URL", &bank_testkit::redis_url()),
        ("BANK_SERVER__LISTEN_ADDR", "127.0.0.1:0"),
        ("BANK_SERVER__ADMIN_ADDR", "127.0.0.1:0"),
    ])
    .spawn()
    .expect("start the ledger binary");

    let lines = Arc::new(Mutex::new(Vec::<serde_json::Value>::new()));
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    let reader = {
        let lines = lines.clone();
        tokio::spawn(async move {
            let mut started_tx = Some(started_tx);
            let mut stdout = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = stdout.next_line().await {
                let json: serde_json::Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
                if json["message"] == "started"
                    && let Some(tx) = started_tx.take()
                {
                    let _ = tx.send(json["grpc"].as_str().unwrap().to_owned());
                }
                lines.lock().unwrap().push(json);
            }
        })
    };
    let addr =
        tokio::time::timeout(Duration::from_secs(20), started_rx).await.expect("started in time").unwrap();

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut client = LedgerServiceClient::connect(format!("http://{addr}")).await.unwrap();
    let mut request = tonic::Request::new(GetBalancesRequest::default());
    request
        .metadata_mut()
        .insert("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01").parse().unwrap());
    let _ = client.get_balances(request).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    {
        let lines = lines.lock().unwrap();
        let call_lines: Vec<_> = lines.iter().filter(|l| l["rpc.method"].as_str().is_some()).collect();
        assert!(!call_lines.is_empty(), "no log line inside the call");
        assert!(
            call_lines.iter().all(|l| l["trace_id"] == trace_id),
            "every line inside the call carries the caller's trace id: {call_lines:?}"
        );
    }

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status =
        tokio::time::timeout(Duration::from_secs(30), child.wait()).await.expect("exits in time").unwrap();
    reader.await.unwrap();
    assert!(status.success(), "exit status {status:?}");
    let lines = lines.lock().unwrap();
    let complete = lines.iter().filter(|l| l["message"] == "shutdown complete").count();
    assert_eq!(complete, 1, "one `shutdown complete` line");
    assert_eq!(lines.last().unwrap()["message"], "shutdown complete", "and it is the last line");
}

/// Runs the binary to its exit and returns (exit code, stderr lines).
async fn run_to_exit(envs: &[(&str, &str)]) -> (i32, Vec<String>) {
    let output = tokio::time::timeout(Duration::from_secs(30), ledger(envs).output())
        .await
        .expect("exits in time")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<String> = stderr.lines().filter(|l| !l.trim().is_empty()).map(str::to_owned).collect();
    assert!(!stderr.contains("panicked"), "no panic: {stderr}");
    (output.status.code().unwrap(), lines)
}

#[tokio::test]
async fn an_unknown_config_key_stops_start_up_with_one_line_naming_it() {
    let (code, lines) = run_to_exit(&[
        ("BANK_DATABASE__URL", "postgres://127.0.0.1/x"),
        ("BANK_REDIS__URL", "redis://127.0.0.1:6379"),
        ("BANK_DATABASE__COLOUR", "blue"),
    ])
    .await;
    assert_eq!(code, 2);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("colour"), "{lines:?}");
}

#[tokio::test]
async fn a_missing_secret_file_stops_start_up_with_one_line_naming_it() {
    let (code, lines) = run_to_exit(&[("BANK_DATABASE__URL_FILE", "/nonexistent/db-url")]).await;
    assert_eq!(code, 2);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("BANK_DATABASE__URL_FILE") && lines[0].contains("/nonexistent/db-url"),
        "{lines:?}"
    );
}

#[tokio::test]
async fn an_unreachable_database_stops_start_up_with_one_line_naming_the_setting() {
    let (code, lines) = run_to_exit(&[
        ("BANK_DATABASE__URL", "postgres://postgres:hunter2@127.0.0.1:1/nowhere"),
        ("BANK_REDIS__URL", "redis://127.0.0.1:6379"),
        ("BANK_DATABASE__ACQUIRE_TIMEOUT", "2s"),
    ])
    .await;
    assert_eq!(code, 1);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("database.url") && lines[0].contains("127.0.0.1:1"), "{lines:?}");
    assert!(!lines[0].contains("hunter2"), "the password never reaches the output: {lines:?}");
}
