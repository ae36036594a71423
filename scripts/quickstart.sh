#!/usr/bin/env bash
# One command to bring keyledger up on this machine and show a key's life:
# installs the pinned nats-server if missing, starts it with JetStream on loopback with a local
# data dir (.keyledger/nats), initialises a ledger (keystore sealed under a passphrase through
# Argon2id), runs the demo (create, rotate, use, grant, destroy) and verifies the chain.
# The server keeps running afterwards; stop it with: scripts/quickstart.sh stop
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

state=.keyledger
port="${KEYLEDGER_PORT:-14222}"
pidfile="$state/nats.pid"
export KEYLEDGER_NATS="nats://127.0.0.1:$port"
export KEYLEDGER_LEDGER="${KEYLEDGER_LEDGER:-quickstart}"
# Demo only: a real deployment takes the passphrase from an operator (or uses --shares).
export KEYLEDGER_PASSPHRASE="${KEYLEDGER_PASSPHRASE:-demo passphrase, not for production}"

if [ "${1:-}" = "stop" ]; then
    if [ -f "$pidfile" ]; then kill "$(cat "$pidfile")" 2>/dev/null || true; rm -f "$pidfile"; fi
    echo "stopped"; exit 0
fi

mkdir -p "$state"
nats_bin="$(scripts/install-nats-server.sh)"

if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "== nats-server already running (pid $(cat "$pidfile")) on $KEYLEDGER_NATS"
else
    echo "== starting $("$nats_bin" --version) on $KEYLEDGER_NATS (data in $state/nats)"
    "$nats_bin" -a 127.0.0.1 -p "$port" -js -sd "$state/nats" -m "$((port + 1))" -l "$state/nats.log" &
    echo $! > "$pidfile"
    for _ in $(seq 1 100); do
        if curl -fsS "http://127.0.0.1:$((port + 1))/healthz?js-enabled-only=true" >/dev/null 2>&1 \
            || (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
        sleep 0.1
    done
fi

echo "== building keyledger"
cargo build --release -q -p api
kl=target/release/keyledger

if [ ! -f "$state/keystore.json" ]; then
    echo "== keyledger init"
    "$kl" init --keystore "$state/keystore.json" --passphrase-env KEYLEDGER_PASSPHRASE
fi

echo "== keyledger demo"
"$kl" demo --keystore "$state/keystore.json" --passphrase-env KEYLEDGER_PASSPHRASE

echo
echo "nats-server is still running on $KEYLEDGER_NATS; try:"
echo "  KEYLEDGER_NATS=$KEYLEDGER_NATS KEYLEDGER_LEDGER=$KEYLEDGER_LEDGER $kl history"
echo "  KEYLEDGER_NATS=$KEYLEDGER_NATS KEYLEDGER_LEDGER=$KEYLEDGER_LEDGER $kl verify"
echo "stop it with: scripts/quickstart.sh stop"
