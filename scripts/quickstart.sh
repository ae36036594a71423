#!/usr/bin/env bash
# One command to bring keyledger up on this machine and show a key's life:
# installs the pinned nats-server if missing, starts it with JetStream on loopback with a local
# data dir (.keyledger/nats), initialises a ledger (keystore sealed under a passphrase through
# Argon2id), starts the keyledger service, trusts a demo token issuer, and drives one key
# through the service: create, grant, encrypt, decrypt, rotate, rewrap, data keys, scheduled
# destruction, destroy; then prints the key's verified history and verifies the whole chain.
# nats-server and the service keep running; stop them with: scripts/quickstart.sh stop
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
    for f in "$state/serve.pid" "$pidfile"; do
        if [ -f "$f" ]; then kill "$(cat "$f")" 2>/dev/null || true; rm -f "$f"; fi
    done
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

servepid="$state/serve.pid"
export KEYLEDGER_ISSUER_PASSPHRASE="${KEYLEDGER_ISSUER_PASSPHRASE:-demo issuer passphrase, not for production}"
if [ -f "$servepid" ] && kill -0 "$(cat "$servepid")" 2>/dev/null; then
    echo "== keyledger serve already running (pid $(cat "$servepid"))"
else
    echo "== keyledger serve (log in $state/serve.log; destruction waiting period 2 s for the demo)"
    "$kl" serve --keystore "$state/keystore.json" --passphrase-env KEYLEDGER_PASSPHRASE \
        --min-destroy-wait-s 2 >"$state/serve.log" 2>&1 &
    echo $! > "$servepid"
    for _ in $(seq 1 150); do
        if "$kl" key nonce >/dev/null 2>&1; then break; fi
        sleep 0.2
    done
fi

if [ ! -f "$state/issuer.key" ]; then
    echo "== an identity provider for the demo: issuer key (sealed), trusted by an event"
    pub="$("$kl" issuer new --name demo-idp --out "$state/issuer.key" --argon2-m-kib 8192)"
    "$kl" issuer trust --name demo-idp --public-key "$pub" \
        --keystore "$state/keystore.json" --passphrase-env KEYLEDGER_PASSPHRASE >/dev/null
fi
token() { "$kl" token issue --issuer-key "$state/issuer.key" --tenant demo "$@"; }
admin="$(token --subject ann --role tenant-admin)"
app="$(token --subject payments-app)"
as_admin() { echo "\$ keyledger key $*  (as ann, tenant-admin)" >&2; "$kl" key --token "$admin" "$@"; }
as_app() { echo "\$ keyledger key $*  (as payments-app)" >&2; "$kl" key --token "$app" "$@"; }
field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

echo
echo "== a key's life, through the service (every step is a signed event)"
key="$(as_admin create --name payments --type aes256-gcm --rotation-period-s 7776000 --json | field '["key"]')"
echo "created $key"
as_admin grant "$key" --principal payments-app --op encrypt,decrypt,rewrap,generate-data-key
ct="$(as_app encrypt "$key" --plaintext "4111 1111 1111 1111" --aad order-42)"
echo "$ct"
as_app decrypt "$key" "$ct" --aad order-42
as_admin rotate "$key"
ct2="$(as_app rewrap "$key" "$ct" --aad order-42)"
echo "$ct2"
as_app decrypt "$key" "$ct2" --aad order-42
as_app data-key "$key"
as_app data-key "$key" --bytes 32 --with-plaintext
as_admin schedule-destroy "$key" --wait-s 2
sleep 2.2
as_admin destroy "$key"
echo "\$ keyledger key decrypt ... (after destruction: must fail)"
if "$kl" key --token "$app" decrypt "$key" "$ct2" --aad order-42; then
    echo "decrypt after destroy unexpectedly succeeded" >&2; exit 1
fi

echo
echo "== the key's verified history"
"$kl" history --key "$key"
echo
echo "== verify the whole chain against the keystore's root key"
root="$(python3 -c "import json; print(json.load(open('$state/keystore.json'))['root_public'])" 2>/dev/null || true)"
if [ -n "$root" ]; then "$kl" verify --root-key "$root"; else "$kl" verify; fi

echo
echo "nats-server ($KEYLEDGER_NATS) and keyledger serve are still running; try:"
echo "  export KEYLEDGER_NATS=$KEYLEDGER_NATS KEYLEDGER_LEDGER=$KEYLEDGER_LEDGER"
echo "  export KEYLEDGER_TOKEN=\$($kl token issue --issuer-key $state/issuer.key --tenant demo --subject ann --role tenant-admin)"
echo "  $kl key list; $kl key create --name k2 --type ed25519; $kl history; $kl verify"
echo "stop both with: scripts/quickstart.sh stop"
