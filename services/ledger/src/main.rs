//! The `ledger` binary: everything lives in the library so tests start the very same service.

fn main() -> std::process::ExitCode {
    bank_platform::run_service::<bank_ledger::Ledger>()
}
