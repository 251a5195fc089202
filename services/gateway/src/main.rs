//! The `gateway` binary: everything lives in the library so tests start the very same gateway.

fn main() -> std::process::ExitCode {
    bank_platform::run_service::<bank_gateway::Gateway>()
}
