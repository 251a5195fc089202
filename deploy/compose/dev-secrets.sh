#!/usr/bin/env bash
# DEVELOPMENT ONLY. Generates the secrets of the docker compose stack once, into the `secrets` volume
# (never into the image, never into git): a random PostgreSQL password and the database URLs built
# from it, identity's KEK, the cards vault's KEK, the first admin, and one service client per component. A production
# deployment never uses this: its secrets come from the platform's secret store (existingSecret in the
# Helm chart). `docker compose down -v` throws them away together with the data they protect.
set -euo pipefail
umask 077
dir=/secrets
random_secret() { head -c 48 /dev/urandom | base64 | tr -d '\n/+=' | head -c 32; }

if [ ! -s "$dir/kek" ]; then
  pg_password=$(random_secret)
  printf '%s' "$pg_password" > "$dir/postgres-password"
  for svc in identity accounts ledger cards notifications; do
    printf 'postgres://postgres:%s@postgres:5432/bank_%s' "$pg_password" "$svc" > "$dir/database-url-${svc}"
  done
  head -c 32 /dev/urandom | base64 > "$dir/kek"
  printf 'admin@bankmesh.local:%s\n' "$(random_secret)" > "$dir/admin"
  # client_id:secret:scopes, the same scopes as scripts/dev.sh
  declare -A scopes=(
    [accounts]="identity:introspect,ledger:accounts,ledger:read"
    [ledger]="identity:introspect"
    [cards]="identity:introspect,ledger:holds"
    [notifications]="identity:introspect,ledger:accounts"
    [gateway]="identity:introspect"
  )
  echo "# client_id:secret:scopes — service clients identity provisions at start" > "$dir/service-clients"
  for svc in accounts ledger cards notifications gateway; do
    secret=$(random_secret)
    printf '%s' "$secret" > "$dir/client-${svc}"
    echo "${svc}:${secret}:${scopes[$svc]}" >> "$dir/service-clients"
  done
  echo "dev-secrets: generated new development secrets"
fi

# The cards vault's KEK (`id=base64`), also for volumes created before cards had a vault.
if [ ! -s "$dir/vault-keks" ]; then
  printf 'kek-1=%s' "$(head -c 32 /dev/urandom | base64)" > "$dir/vault-keks"
fi

# The postgres image runs as uid 999; bankmesh runs as 10001 (Dockerfile).
chown 999:999 "$dir/postgres-password"
find "$dir" -type f ! -name postgres-password -exec chown 10001:10001 {} +
chmod 0400 "$dir"/*
chmod 0755 "$dir"
echo "dev-secrets: first admin (development only): $(cat "$dir/admin")"
