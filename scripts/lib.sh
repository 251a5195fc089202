# Shared helpers for the dev and test scripts. Sourced, not run.

log() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Runs a command as root: directly when we are root, else through sudo.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo "$@"; else
    die "need root (or sudo) to run: $*"
  fi
}

# Is something listening on 127.0.0.1:$1?
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

apt_updated=""
apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "cannot install $* here: no apt-get. Install it by hand, then re-run."
  if [ -z "$apt_updated" ]; then
    log "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  log "installing $* from the OS packages"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

wait_for_port() {
  local port=$1 what=$2
  for _ in $(seq 1 60); do
    port_open "$port" && return 0
    sleep 0.5
  done
  die "$what did not start listening on 127.0.0.1:$port"
}

# PostgreSQL on 127.0.0.1:5432 with trust auth for local TCP connections (a developer's or CI's own
# throwaway server). Uses a running one; else starts the installed cluster; else installs it.
ensure_postgres() {
  if port_open 5432; then return 0; fi
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    apt_install postgresql postgresql-client
  fi
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  local hba="/etc/postgresql/$version/main/pg_hba.conf"
  if ! as_root grep -qE '^host\s+all\s+all\s+127\.0\.0\.1/32\s+trust' "$hba"; then
    log "PostgreSQL $version: trusting local TCP connections from 127.0.0.1 (dev/test server only)"
    as_root sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
  fi
  log "starting PostgreSQL $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null \
    || as_root pg_ctlcluster "$version" main start
  wait_for_port 5432 PostgreSQL
}

# Redis on 127.0.0.1:6379. Uses a running one; else starts the installed server; else installs it.
ensure_redis() {
  if port_open 6379; then return 0; fi
  command -v redis-server >/dev/null 2>&1 || apt_install redis-server
  log "starting Redis"
  as_root redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp --logfile /tmp/bankmesh-redis.log
  wait_for_port 6379 Redis
}

ensure_rust() {
  command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust (rustup) first"
}

# Runs SQL against the dev/test server as the postgres superuser.
psql_admin() {
  if command -v psql >/dev/null 2>&1; then
    psql -X -q -v ON_ERROR_STOP=1 "postgres://postgres@127.0.0.1:5432/postgres" "$@"
  else
    apt_install postgresql-client
    psql -X -q -v ON_ERROR_STOP=1 "postgres://postgres@127.0.0.1:5432/postgres" "$@"
  fi
}
