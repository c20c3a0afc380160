# syntax=docker/dockerfile:1
# The one Tally image: the `tally` binary, whose subcommand picks the service
# (`tally migrate`, `tally ingest`, `tally processor`, `tally query-api`). Used by
# docker-compose.yml. Migrations are compiled into the binary, so the image needs no source tree.

# ---- build ------------------------------------------------------------------------------
# Cargo.toml says rust-version 1.85, but Cargo.lock pins crates that need a newer compiler:
# clickhouse 0.15.3 and uuid 1.29.3 need 1.89, bon/darling/time/icu need 1.88. The default is
# the toolchain the workspace is developed with. Any version >= 1.89 builds it; 1.85 does not.
# Keep the -bookworm variant so that the binary's glibc matches the runtime image.
ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS builder

# cmake: rdkafka builds librdkafka from its bundled source (`cmake-build` feature). The curl
# headers match scripts/stack; they (and libcurl4 below) are needed only if rdkafka's `curl`
# feature is turned on: with the current features librdkafka is built WITH_CURL=0.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake libcurl4-openssl-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

# The cache mounts keep the registry and target directory between builds (BuildKit); the binary
# is copied out of the cached target directory, which does not persist into the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin tally \
 && cp target/release/tally /usr/local/bin/tally

# ---- runtime ----------------------------------------------------------------------------
FROM debian:bookworm-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libcurl4 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin tally

COPY --from=builder /usr/local/bin/tally /usr/local/bin/tally

USER tally
ENTRYPOINT ["tally"]
