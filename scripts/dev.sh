#!/usr/bin/env bash
# Brings the whole mesh up on this machine: PostgreSQL and Redis on 127.0.0.1 (started, or installed
# from the OS packages, when absent), one database per service, a build, then all six processes.
# Prints the endpoints and runs until Ctrl-C (or SIGTERM), then stops every process cleanly.
#
#   scripts/dev.sh            # debug build
#   PROFILE=release scripts/dev.sh
#   scripts/dev.sh --reset    # first drop every dev database and .dev/ (secrets, logs, mail)
#
# Logs: .dev/logs/<service>.log (JSON lines). Settings: each process reads BANK_* variables; put
# overrides in .dev/env (sourced when present).
#
# A second mesh beside the first (the test suite's schemathesis run uses this):
#   DEV_DIR=<dir>          state directory instead of .dev
#   DEV_PORT_OFFSET=<n>    added to every port
#   DEV_DB_PREFIX=<p>      database names <p><service> instead of bank_<service>
#   DEV_REDIS_PREFIX=<p>   Redis keys under <p> instead of bank:
#   DEV_GATEWAY_SETTINGS="BANK_X=1 BANK_Y=2"   extra settings of the gateway only
# Once every process is ready, "$DEV_DIR/up" exists.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

profile="${PROFILE:-debug}"
dev="${DEV_DIR:-.dev}"
offset="${DEV_PORT_OFFSET:-0}"
db_prefix="${DEV_DB_PREFIX:-bank_}"
redis_prefix="${DEV_REDIS_PREFIX:-bank:}"
grpc_services=(identity accounts ledger cards notifications)
declare -A grpc_port=([identity]=50051 [accounts]=50052 [ledger]=50053 [cards]=50054 [notifications]=50055)
declare -A admin_port=([identity]=9101 [accounts]=9102 [ledger]=9103 [cards]=9104 [notifications]=9105 [gateway]=9106)
gateway_port=$((8080 + offset))
mail_port=$((1025 + offset))
for svc in "${!grpc_port[@]}"; do grpc_port[$svc]=$((grpc_port[$svc] + offset)); done
for svc in "${!admin_port[@]}"; do admin_port[$svc]=$((admin_port[$svc] + offset)); done

ensure_rust
ensure_postgres
ensure_redis

if [ "${1:-}" = "--reset" ]; then
  log "reset: dropping the dev databases and .dev/"
  for svc in "${grpc_services[@]}"; do psql_admin -c "DROP DATABASE IF EXISTS ${db_prefix}${svc} WITH (FORCE)"; done
  rm -rf "$dev"
fi

for svc in "${grpc_services[@]}"; do
  db="${db_prefix}${svc}"
  if [ -z "$(psql_admin -tAc "SELECT 1 FROM pg_database WHERE datname = '${db}'")" ]; then
    log "creating database ${db}"
    psql_admin -c "CREATE DATABASE ${db}"
  fi
done

log "building (${profile})"
if [ "$profile" = release ]; then cargo build --release --workspace --bins; else cargo build --workspace --bins; fi
bin="target/${profile}"

for port in "${grpc_port[@]}" "${admin_port[@]}" "$gateway_port" "$mail_port"; do
  port_open "$port" && die "port $port is already in use (another mesh running?)"
done

mkdir -p "$dev/logs" "$dev/secrets"
chmod 700 "$dev/secrets"
rm -f "$dev/up"
[ -f "$dev/env" ] && source "$dev/env"

# Development secrets, generated once per checkout and kept in .dev/secrets (git-ignored):
# identity's key-encryption key, the first admin, and one service client per service.
random_secret() { head -c "$1" /dev/urandom | base64 | tr -d '\n/+=' | head -c "$2"; }
[ -s "$dev/secrets/kek" ] || head -c 32 /dev/urandom | base64 > "$dev/secrets/kek"
# The cards vault's key-encryption key (`id=base64`; the vault's data keys are wrapped with it, so
# keep it with the dev databases).
[ -s "$dev/secrets/cards-keks" ] || printf 'kek-1=%s\n' "$(head -c 32 /dev/urandom | base64)" > "$dev/secrets/cards-keks"
[ -s "$dev/secrets/admin" ] || printf 'admin@bankmesh.local:%s\n' "$(random_secret 48 32)" > "$dev/secrets/admin"
# (Regenerated when an older checkout's file lacks a scope a service now needs.)
if [ ! -s "$dev/secrets/clients" ] || ! grep -q '^notifications:.*ledger:accounts' "$dev/secrets/clients"; then
  {
    echo "# client_id:secret:scopes — service clients identity provisions at start"
    echo "accounts:$(random_secret 48 32):identity:introspect,ledger:accounts,ledger:read"
    echo "ledger:$(random_secret 48 32):identity:introspect"
    echo "cards:$(random_secret 48 32):identity:introspect,ledger:holds"
    echo "notifications:$(random_secret 48 32):identity:introspect,ledger:accounts"
    echo "gateway:$(random_secret 48 32):identity:introspect"
  } > "$dev/secrets/clients"
fi
for svc in accounts ledger cards notifications gateway; do
  grep "^${svc}:" "$dev/secrets/clients" | cut -d: -f2 > "$dev/secrets/client-${svc}"
done
chmod 600 "$dev"/secrets/*

pids=()
stopped=""
stop_all() {
  [ -n "$stopped" ] && return 0
  stopped=1
  [ "${#pids[@]}" -eq 0 ] && return 0
  log "stopping the mesh (SIGTERM, then waiting for every process to drain)"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  log "stopped"
}
trap 'stop_all; exit 0' INT TERM
trap stop_all EXIT

start() {
  local svc=$1; shift
  # The test suite's own BANK_TEST_* variables are not settings of any service.
  env -u BANK_TEST_DATABASE_URL -u BANK_TEST_REDIS_URL BANK_ENV=local BANK_CONFIG_DIR="services/${svc}/config" "$@" \
    "${bin}/${svc}" >"$dev/logs/${svc}.log" 2>&1 &
  pids+=("$!")
}

# The development mail sink: notifications sends every email here over SMTP; read them in $dev/mail.
python3 scripts/dev-mail.py --port "$mail_port" --dir "$dev/mail" >"$dev/logs/mail.log" 2>&1 &
pids+=("$!")

start identity \
  BANK_SERVER__LISTEN_ADDR="127.0.0.1:${grpc_port[identity]}" \
  BANK_SERVER__ADMIN_ADDR="127.0.0.1:${admin_port[identity]}" \
  BANK_SERVER__TRUSTED_FORWARDERS='["127.0.0.1"]' \
  BANK_DATABASE__URL="postgres://postgres@127.0.0.1:5432/${db_prefix}identity" \
  BANK_REDIS__URL="redis://127.0.0.1:6379" \
  BANK_REDIS__KEY_PREFIX="${redis_prefix}identity:" \
  BANK_AUTH__REDIS_PREFIX="${redis_prefix}auth:" \
  BANK_KEYS__KEK_FILE="$dev/secrets/kek" \
  BANK_BOOTSTRAP__ADMIN_FILE="$dev/secrets/admin" \
  BANK_BOOTSTRAP__SERVICE_CLIENTS_FILE="$dev/secrets/clients"
streams="[\"${redis_prefix}identity:events\",\"${redis_prefix}accounts:events\",\"${redis_prefix}ledger:events\",\"${redis_prefix}cards:events\"]"
# Cards: the ledger (holds), accounts (the card's account), the vault's KEK, and owner charges
# (development only: no acquirer on a laptop). Notifications: the streams, the local SMTP sink,
# webhooks to this machine allowed (development only).
declare -A extra=(
  [accounts]="BANK_LEDGER_URL=http://127.0.0.1:${grpc_port[ledger]}"
  [cards]="BANK_LEDGER_URL=http://127.0.0.1:${grpc_port[ledger]} BANK_ACCOUNTS_URL=http://127.0.0.1:${grpc_port[accounts]} BANK_VAULT__KEKS_FILE=$dev/secrets/cards-keks BANK_CARDS__ALLOW_OWNER_CHARGES=true"
  [notifications]="BANK_LEDGER_URL=http://127.0.0.1:${grpc_port[ledger]} BANK_CONSUMER__STREAMS=${streams}
    BANK_EMAIL__SMTP_HOST=127.0.0.1 BANK_EMAIL__SMTP_PORT=${mail_port} BANK_EMAIL__SMTP_TLS=none
    BANK_EMAIL__FROM=bankmesh-dev<no-reply@bankmesh.local> BANK_EMAIL__LINK_BASE_URL=http://localhost:3000
    BANK_WEBHOOKS__ALLOW_HTTP=true BANK_WEBHOOKS__ALLOWED_NETWORKS=[\"127.0.0.0/8\"] BANK_WEBHOOKS__TIMEOUT=3s"
)
set -f # the extra settings hold JSON lists: split them into words, never glob them
for svc in accounts ledger cards notifications; do
  # shellcheck disable=SC2086 # extra settings are KEY=VALUE words
  start "$svc" ${extra[$svc]:-} \
    BANK_SERVER__LISTEN_ADDR="127.0.0.1:${grpc_port[$svc]}" \
    BANK_SERVER__ADMIN_ADDR="127.0.0.1:${admin_port[$svc]}" \
    BANK_DATABASE__URL="postgres://postgres@127.0.0.1:5432/${db_prefix}${svc}" \
    BANK_REDIS__URL="redis://127.0.0.1:6379" \
    BANK_REDIS__KEY_PREFIX="${redis_prefix}${svc}:" \
    BANK_AUTH__REDIS_PREFIX="${redis_prefix}auth:" \
    BANK_AUTH__IDENTITY_URL="http://127.0.0.1:${grpc_port[identity]}" \
    BANK_AUTH__CLIENT_ID="$svc" \
    BANK_AUTH__CLIENT_SECRET_FILE="$dev/secrets/client-${svc}"
done
set +f
# The gateway: plain HTTP locally, so no HSTS; browsers of a local frontend may call it.
# shellcheck disable=SC2086 # DEV_GATEWAY_SETTINGS is a list of KEY=VALUE words
start gateway \
  BANK_SERVER__LISTEN_ADDR="127.0.0.1:${gateway_port}" \
  BANK_SERVER__ADMIN_ADDR="127.0.0.1:${admin_port[gateway]}" \
  BANK_REDIS__URL="redis://127.0.0.1:6379" \
  BANK_REDIS__KEY_PREFIX="${redis_prefix}gateway:" \
  BANK_AUTH__REDIS_PREFIX="${redis_prefix}auth:" \
  BANK_EDGE__HSTS=false \
  BANK_EDGE__CORS_ALLOWED_ORIGINS='["http://localhost:3000","http://127.0.0.1:3000","http://localhost:5173","http://127.0.0.1:5173"]' \
  BANK_UPSTREAMS__IDENTITY="http://127.0.0.1:${grpc_port[identity]}" \
  BANK_UPSTREAMS__ACCOUNTS="http://127.0.0.1:${grpc_port[accounts]}" \
  BANK_UPSTREAMS__LEDGER="http://127.0.0.1:${grpc_port[ledger]}" \
  BANK_UPSTREAMS__CARDS="http://127.0.0.1:${grpc_port[cards]}" \
  BANK_UPSTREAMS__NOTIFICATIONS="http://127.0.0.1:${grpc_port[notifications]}" \
  BANK_AUTH__IDENTITY_URL="http://127.0.0.1:${grpc_port[identity]}" \
  BANK_AUTH__CLIENT_ID=gateway \
  BANK_AUTH__CLIENT_SECRET_FILE="$dev/secrets/client-gateway" \
  ${DEV_GATEWAY_SETTINGS:-}

# Ready when every admin port answers /health/ready with 200.
ready() {
  local port=$1
  { exec 3<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null || return 1
  printf 'GET /health/ready HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
  local status
  status=$(head -n 1 <&3 | cut -d' ' -f2)
  exec 3>&-
  [ "$status" = 200 ]
}
for svc in "${grpc_services[@]}" gateway; do
  ok=""
  for _ in $(seq 1 120); do
    if ready "${admin_port[$svc]}"; then ok=1; break; fi
    sleep 0.25
  done
  [ -n "$ok" ] || { tail -n 20 "$dev/logs/${svc}.log" >&2; die "${svc} did not become ready (log: $dev/logs/${svc}.log)"; }
done
touch "$dev/up"

cat <<INFO

bankmesh is up (${profile} build). Ctrl-C stops everything.

  service        gRPC               admin (/metrics, /health/ready)
INFO
for svc in "${grpc_services[@]}"; do
  printf '  %-14s %-18s http://127.0.0.1:%s\n' "$svc" "127.0.0.1:${grpc_port[$svc]}" "${admin_port[$svc]}"
done
printf '  %-14s %-18s http://127.0.0.1:%s   (REST)\n' gateway "http://127.0.0.1:${gateway_port}" "${admin_port[gateway]}"
cat <<INFO

  logs:      ${dev}/logs/<service>.log
  emails:    ${dev}/mail/index   (one line per email; read ${dev}/mail/<n>.txt; SMTP sink on 127.0.0.1:${mail_port})
  admin:     ${dev}/secrets/admin   (email:password of the first admin)
  databases: postgres://postgres@127.0.0.1:5432/${db_prefix}<service>
  try:       grpcurl -plaintext 127.0.0.1:${grpc_port[identity]} list
             curl -s http://127.0.0.1:${gateway_port}/api/v1/auth/register -H 'content-type: application/json' \\
               -d '{"email":"alice@example.com","password":"a long passphrase of yours","givenName":"Alice"}'

INFO

# Run until a signal arrives or a process dies.
while true; do
  for i in "${!pids[@]}"; do
    if ! kill -0 "${pids[$i]}" 2>/dev/null; then
      log "a process exited unexpectedly; see $dev/logs/"
      exit 1
    fi
  done
  sleep 1 & wait $! || true
done
