#!/usr/bin/env bash
# Ensure the pinned `buf` (npm package @bufbuild/buf, pinned in tools/package.json and
# tools/package-lock.json) is installed under tools/node_modules, then print the absolute
# path of the buf binary on stdout. Everything else goes to stderr, so callers can do:
#
#   BUF="$(scripts/ensure-buf.sh)" && "$BUF" lint
#
# Idempotent: `npm ci` runs only when the binary is missing or reports another version.
# Works from any working directory. Needs node + npm and the npm registry (first run only).
set -euo pipefail

script_dir="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
repo_root="$(cd -- "${script_dir}/.." && pwd -P)"
tools_dir="${repo_root}/tools"
buf_bin="${tools_dir}/node_modules/.bin/buf"

log() { printf 'ensure-buf: %s\n' "$*" >&2; }

for tool in node npm; do
  if ! command -v "${tool}" >/dev/null 2>&1; then
    log "'${tool}' not found on PATH; install Node.js (>= 18) and npm first"
    exit 1
  fi
done

# The single source of the pinned version is tools/package.json (an exact version).
pinned="$(node -e '
  const pkg = require(process.argv[1]);
  const v = (pkg.devDependencies || {})["@bufbuild/buf"];
  if (!v || !/^\d+\.\d+\.\d+$/.test(v)) {
    console.error("tools/package.json must pin @bufbuild/buf to an exact version, got: " + v);
    process.exit(1);
  }
  process.stdout.write(v);
' "${tools_dir}/package.json")"

installed_version() {
  if [[ -x "${buf_bin}" ]]; then
    "${buf_bin}" --version 2>/dev/null | head -n 1 || true
  fi
}

current="$(installed_version)"
if [[ "${current}" != "${pinned}" ]]; then
  if [[ -z "${current}" ]]; then
    log "buf ${pinned} not installed; running npm ci in tools/"
  else
    log "buf ${current} installed but ${pinned} is pinned; running npm ci in tools/"
  fi
  npm ci --prefix "${tools_dir}" --no-audit --no-fund 1>&2
  current="$(installed_version)"
  if [[ "${current}" != "${pinned}" ]]; then
    log "after npm ci, ${buf_bin} reports '${current:-nothing}', expected ${pinned}"
    exit 1
  fi
fi

printf '%s\n' "${buf_bin}"
