# syntax=docker/dockerfile:1
# One image holding every bankmesh binary; the command picks the process:
#
#   docker build -t bankmesh:dev .
#   docker run --rm bankmesh:dev identity        # or accounts, ledger, cards, notifications, gateway
#
# Stages: chef (cargo-chef from crates.io) -> planner (the dependency recipe: manifests + Cargo.lock)
# -> builder (dependencies cooked in their own layer, cached until Cargo.toml/Cargo.lock change; then
# the workspace) -> runtime (distroless: glibc + CA certificates, no shell, no package manager).
# Nothing is fetched at build time except the base images and crates from crates.io.
#
# SQLX_OFFLINE: the code has no compile-time-checked sqlx macros (query!/query_as!; ADR 0006), so the
# build needs no database and no .sqlx/ data. It is set anyway, so a macro added later fails the build
# loudly instead of trying to reach a database.
#
# Run-time contract (see docs/operations.md): read-only root filesystem, any non-root UID (the image
# runs as 10001:10001), configuration from BANK_* variables, config/<BANK_ENV>.toml under
# BANK_CONFIG_DIR and secret files (BANK_*_FILE). Probes: Kubernetes uses gRPC health (`liveness` /
# "") and the admin port's /health/live and /health/ready; Docker uses the HEALTHCHECK below.

ARG RUST_VERSION=1.95
ARG CARGO_CHEF_VERSION=0.1.77

FROM docker.io/library/rust:${RUST_VERSION}-slim-bookworm AS chef
ARG CARGO_CHEF_VERSION
RUN cargo install cargo-chef --locked --version "${CARGO_CHEF_VERSION}"
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
ENV SQLX_OFFLINE=true \
    CARGO_INCREMENTAL=0 \
    CARGO_TERM_COLOR=never
COPY --from=planner /src/recipe.json recipe.json
# Dependencies only: this layer is reused while the manifests and Cargo.lock stay the same.
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
# The same selection as the cook step (the whole workspace's binaries), so no dependency rebuilds.
RUN cargo build --release --locked --workspace --bins \
 && mkdir -p /out \
 && for bin in identity accounts ledger cards notifications gateway healthcheck; do \
      cp "target/release/${bin}" /out/ && strip "/out/${bin}"; \
    done

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
LABEL org.opencontainers.image.title="bankmesh" \
      org.opencontainers.image.description="bankmesh services: identity, accounts, ledger, cards, notifications, gateway" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/ /usr/local/bin/
ENV BANK_ENV=production \
    BANK_CONFIG_DIR=/etc/bankmesh/config
USER 10001:10001
# gRPC (services) or HTTP (gateway, set BANK_SERVER__LISTEN_ADDR=0.0.0.0:8080), and the admin port.
EXPOSE 50051 8080 9090
# The admin port's readiness; needs BANK_SERVER__ADMIN_ADDR on 9090 (the default).
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["/usr/local/bin/healthcheck", "127.0.0.1:9090", "/health/ready"]
# No default command: the service is named explicitly (`docker run IMAGE identity`).
