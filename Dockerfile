# syntax=docker/dockerfile:1
#
# tally: one image holding both binaries (tally-api, tally-worker); docker-compose.yml
# picks the process with `command:`. Build: docker build -t tally .
#
# config/*.toml and migrations/*.sql are compiled INTO the binaries (include_str! in
# tally-settings, refinery's embed_migrations! in tally-store), so the runtime
# image needs neither directory; they are only needed at build time.

# ------------------------------------------------------------------ build
FROM rust:1-bookworm AS builder
WORKDIR /src

COPY Cargo.toml Cargo.lock ./
COPY crates/ crates/
COPY migrations/ migrations/
COPY config/ config/

# Only the shipped binaries: the services and the operator's `tally` (API keys, imports);
# the workspace also has tally-bench and tally-chaos, test tools that need not be in the
# image. --locked: exactly Cargo.lock's versions.
# Cache mounts (BuildKit, the default builder since Docker 23) keep the crates.io
# registry and target/ between builds. A cache mount is not part of the image, so the
# binaries are copied out of it before the step ends.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin tally-api --bin tally-worker --bin tally \
 && mkdir -p /out \
 && cp target/release/tally-api target/release/tally-worker target/release/tally /out/

# ------------------------------------------------------------------ runtime
FROM debian:bookworm-slim

# ca-certificates: the usual trust store. Note the binaries do not speak TLS today
# (PostgreSQL connections use NoTls, lapin is built without a TLS feature): keep the
# database and the broker on a private network.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 tally \
 && useradd --system --uid 10001 --gid tally --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin tally

COPY --from=builder /out/tally-api /out/tally-worker /out/tally /usr/local/bin/

# Where compose's one-shot `keys` service keeps the API keys (a named volume starts as a copy
# of this directory: owned by tally, closed to others).
RUN mkdir -p /keys && chown tally:tally /keys && chmod 700 /keys

USER tally:tally
# Containers are configured through the environment (TALLY_SECTION__KEY, see README).
ENV TALLY_PROFILE=production \
    TALLY_API__HOST=0.0.0.0 \
    TALLY_API__PORT=8000
EXPOSE 8000

# Both binaries stop gracefully on SIGTERM (what `docker stop` sends).
STOPSIGNAL SIGTERM
CMD ["tally-api"]
