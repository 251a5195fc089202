#!/usr/bin/env bash
# Runs a load-generator scenario in a release build against this machine's PostgreSQL and Redis
# (started, or installed, when absent). Loopback only; every loop is bounded by time.
#
#   scripts/bench.sh login [--clients 4] [--seconds 15]
#   scripts/bench.sh transfers [--clients 32] [--seconds 15] [--accounts 100000]
#   scripts/bench.sh gateway [--op transfer|balance] [--clients 32] [--seconds 10]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_rust
ensure_postgres
ensure_redis
export BANK_TEST_DATABASE_URL="${BANK_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export BANK_TEST_REDIS_URL="${BANK_TEST_REDIS_URL:-redis://127.0.0.1:6379}"
cargo build --release -p bank-bench
exec target/release/loadgen "$@"
