# syntax=docker/dockerfile:1
#
# The keyledger image: the `keyledger` binary (service replica and CLI), its entrypoint and the
# one-shot init script of docker-compose.yml (see deploy/README.md).
#
# No secret is baked in: the keystore lives on a volume (or comes from a secret store), the
# passphrases arrive at run time as secret files that deploy/entrypoint.sh reads into the
# environment variables that `--passphrase-env` names.
#
#   docker build -t keyledger .

# ---- build ------------------------------------------------------------------------------------
# The workspace's rust-version is 1.89; any later 1.x builds it as well.
ARG RUST_VERSION=1.89
FROM rust:${RUST_VERSION}-slim-bookworm AS builder
WORKDIR /src

# The workspace manifest, the lock file and every member's sources (cargo loads all members'
# manifests even to build one package). Docs, scripts, fuzz/ and target/ are not needed: see
# .dockerignore.
COPY Cargo.toml Cargo.lock ./
COPY ledger ledger
COPY projector projector
COPY api api
COPY tests tests

# --locked: the image is built from exactly the dependency versions in Cargo.lock.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p api --bin keyledger \
    && install -D -m 0755 target/release/keyledger /out/keyledger

# ---- runtime ----------------------------------------------------------------------------------
FROM debian:bookworm-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# A fixed, non-root uid/gid (10001) so that volumes and host secret files can be granted to it.
# /keystore and /issuer are created 0700 and owned by it: a named volume mounted there for the
# first time takes that owner and mode.
RUN groupadd --system --gid 10001 keyledger \
    && useradd --system --uid 10001 --gid keyledger --home-dir /home/keyledger --create-home \
        --shell /usr/sbin/nologin keyledger \
    && install -d -o keyledger -g keyledger -m 0700 /keystore /issuer

COPY --from=builder /out/keyledger /usr/local/bin/keyledger
COPY --chmod=0755 deploy/entrypoint.sh /usr/local/bin/keyledger-entrypoint
COPY --chmod=0755 deploy/init-ledger.sh /usr/local/bin/keyledger-init

USER 10001:10001
# Writable working directory: `keyledger init` creates its default share directory
# (.keyledger/shares) relative to it even with a passphrase.
WORKDIR /home/keyledger

ENTRYPOINT ["keyledger-entrypoint"]
CMD ["--help"]
