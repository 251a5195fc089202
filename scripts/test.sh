#!/usr/bin/env bash
# The full test suite: every crate's unit and integration tests against a real PostgreSQL and
# Redis on 127.0.0.1 (started, or installed from the OS packages, when absent). Each test creates
# its own uniquely named database and Redis key prefix and removes them afterwards.
#
#   scripts/test.sh [extra nextest/cargo-test arguments]
#
# Then schemathesis (PyPI) runs against the live REST gateway of a private mesh
# (scripts/schemathesis.sh); SKIP_SCHEMATHESIS=1 leaves it out (e.g. while iterating on one crate).
# Before it, scripts/check-deploy.sh checks the deployment files statically (SKIP_DEPLOY_CHECKS=1 skips).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ensure_rust
ensure_postgres
ensure_redis

# The gateway's tests validate its OpenAPI document with openapi-spec-validator (PyPI) when Python can
# import it; install it when possible, and carry on without it (that test prints a note) otherwise.
if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import openapi_spec_validator' 2>/dev/null; then
  { python3 -m pip install --quiet openapi-spec-validator || python3 -m pip install --quiet --user openapi-spec-validator; } \
    >/dev/null 2>&1 || log "openapi-spec-validator could not be installed; the gateway test skips that check"
fi

export BANK_TEST_DATABASE_URL="${BANK_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export BANK_TEST_REDIS_URL="${BANK_TEST_REDIS_URL:-redis://127.0.0.1:6379}"

if cargo nextest --version >/dev/null 2>&1; then
  log "cargo nextest run --workspace"
  cargo nextest run --workspace --no-fail-fast "$@"
else
  log "cargo-nextest not installed; using cargo test"
  cargo test --workspace --no-fail-fast "$@"
fi

# Deployment files (Dockerfile, compose, Helm chart, k8s/): static checks, a minute cold, seconds warm.
if [ "${SKIP_DEPLOY_CHECKS:-0}" != 1 ]; then scripts/check-deploy.sh; fi

if [ "${SKIP_SCHEMATHESIS:-0}" != 1 ]; then
  scripts/schemathesis.sh
fi
