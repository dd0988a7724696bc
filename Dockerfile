# syntax=docker/dockerfile:1
# Builds the `ingest`, `aggregator`, `billing-sync` and `stripe-fake` binaries into one small runtime image; docker-compose.yml picks
# the binary per service with `entrypoint`. Not buildable on the dev machines (no Docker engine).

# --- build ---------------------------------------------------------------------------------------
# rdkafka-sys (default features) builds the bundled librdkafka with its ./configure script and
# `make` (no cmake, ssl, curl or zstd) and links zlib found through pkg-config. rust:1-bookworm
# already has bash, make, gcc/g++ and pkg-config; the apt line only makes that explicit.
FROM rust:1-bookworm AS builder
RUN apt-get update \
    && apt-get install -y --no-install-recommends make g++ pkg-config zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Every workspace member is needed for cargo to load the workspace, so copy the tree (.dockerignore
# keeps target/, .data/ and .git/ out).
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin ingest --bin aggregator --bin billing-sync --bin stripe-fake \
    && install -D -m 0755 target/release/ingest /out/ingest \
    && install -D -m 0755 target/release/aggregator /out/aggregator \
    && install -D -m 0755 target/release/billing-sync /out/billing-sync \
    && install -D -m 0755 target/release/stripe-fake /out/stripe-fake

# --- runtime -------------------------------------------------------------------------------------
# zlib1g (librdkafka's only shared dependency besides libc) is part of bookworm-slim; curl is for
# the compose healthchecks on /readyz.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 metering \
    && useradd --system --uid 10001 --gid metering --no-create-home --shell /usr/sbin/nologin metering
COPY --from=builder /out/ingest /out/aggregator /out/billing-sync /out/stripe-fake /usr/local/bin/
USER 10001:10001
# ingest HTTP API, aggregator metrics/health, billing-sync API and webhooks.
EXPOSE 8080 9464 8090
# No ENTRYPOINT: each compose service sets `entrypoint: ["ingest"]` or `["aggregator"]`.
CMD ["ingest", "serve"]
