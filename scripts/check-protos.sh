#!/usr/bin/env bash
# buf lint, buf format (must be clean) and, when there is a previous commit, buf breaking against it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

command -v npm >/dev/null 2>&1 || apt_install nodejs npm
BUF="$(scripts/ensure-buf.sh)"
log "buf lint"
"$BUF" lint
log "buf format --diff --exit-code"
"$BUF" format --diff --exit-code
if git rev-parse --verify --quiet HEAD~1 >/dev/null && git cat-file -e HEAD~1:buf.yaml 2>/dev/null; then
  log "buf breaking against HEAD~1"
  "$BUF" breaking --against ".git#ref=HEAD~1"
fi
