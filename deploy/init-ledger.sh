#!/usr/bin/env bash
# One-shot, idempotent ledger initialisation for docker-compose.yml (the `init` service),
# installed as /usr/local/bin/keyledger-init and run through keyledger-entrypoint, which has
# already read the passphrase secret into KEYLEDGER_PASSPHRASE.
#
# Exits 0 only when $KEYLEDGER_KEYSTORE exists AND is the keystore of the ledger on the cluster
# (its root key verifies the stream's chain), so `condition: service_completed_successfully`
# really means "the replicas can serve":
#
# - keystore present: `keyledger verify --root-key <its root>`; no new keys, nothing appended.
#   A keystore whose ledger is missing, empty or rooted elsewhere is an error (NATS data lost,
#   wrong volume), never a reason to initialise again.
# - keystore absent: runs
#       keyledger init --replicas $KEYLEDGER_REPLICAS --keystore <keystore>.staged \
#                      --passphrase-env KEYLEDGER_PASSPHRASE
#   and renames <keystore>.staged to the keystore only once init has succeeded. `keyledger
#   init` writes its keystore before it creates the stream and appends genesis; staging keeps a
#   keystore whose ledger was never created from looking like a finished one.
# - a <keystore>.staged left by an interrupted run is resolved first: if the stream's genesis
#   is signed by its root key (init got that far; the reply may have been lost) it is adopted;
#   if the stream is missing, empty or rooted elsewhere it never became a ledger and is moved
#   aside to <keystore>.staged.unused-<time> (never deleted: it holds key material); if NATS
#   cannot tell yet, the run retries and finally fails, leaving it in place.
# - the cluster may report healthy before JetStream has a meta leader; every step retries
#   ($KEYLEDGER_INIT_ATTEMPTS times, $KEYLEDGER_INIT_RETRY_S apart).
# - an existing ledger with no keystore here (keystore volume lost) is refused by `keyledger
#   init` itself ("refusing to initialise it again"): restore the keystore from its backup.
#
# Environment: KEYLEDGER_NATS and KEYLEDGER_LEDGER as for keyledger; KEYLEDGER_PASSPHRASE.
set -euo pipefail

keystore="${KEYLEDGER_KEYSTORE:-/keystore/keystore.json}"
replicas="${KEYLEDGER_REPLICAS:-3}"
attempts="${KEYLEDGER_INIT_ATTEMPTS:-60}"
retry_s="${KEYLEDGER_INIT_RETRY_S:-2}"
kl="${KEYLEDGER_BIN:-keyledger}"
staged="$keystore.staged"
nats="${KEYLEDGER_NATS:-nats://127.0.0.1:4222}"

log() { echo "keyledger-init: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

[[ -n "${KEYLEDGER_PASSPHRASE:-}" ]] \
    || die "KEYLEDGER_PASSPHRASE is not set (is the keyledger_passphrase secret mounted?)"
mkdir -p -- "$(dirname -- "$keystore")"

# One init at a time per keystore volume (`docker compose up` racing `docker compose run init`).
if command -v flock >/dev/null 2>&1; then
    exec 9>"$keystore.lock"
    flock 9
fi

# The root public key recorded in a keystore's (unauthenticated) header; only used as the pin
# for `keyledger verify`, which then checks it against the genesis event's signature.
root_of() {
    sed -n 's/^[[:space:]]*"root_public":[[:space:]]*"\([0-9a-f]\{64\}\)".*/\1/p' -- "$1" | head -n 1
}

# How the keystore $1 relates to the ledger on the cluster; sets $rel to one word:
#   match    the stream verifies from genesis with this keystore's root key pinned
#   missing  the stream does not exist
#   unused   the stream exists but not one event verifies under this root (empty, or its
#            genesis is signed by another root key)
#   unknown  anything else: NATS or JetStream not reachable yet, or a chain that does not verify
# The verify output is kept in $last for error messages. (Called directly, not in $(...), so
# that both variables reach the caller.)
rel=""
last=""
# shellcheck disable=SC2016 # the backquotes are part of keyledger's message, not an expansion
missing_stream='not found (run `keyledger init` first)'
relation() {
    local root rc=0
    root="$(root_of "$1")"
    if [[ -z "$root" ]]; then
        rel=unknown
        last="$1 has no root_public field"
        return
    fi
    last="$("$kl" --json verify --root-key "$root" 2>&1)" || rc=$?
    if ((rc == 0)) && grep -q '"ok":true' <<<"$last"; then
        rel=match
    elif ((rc == 2)) && grep -qF "$missing_stream" <<<"$last"; then
        rel=missing
    elif ((rc == 1)) && grep -Eq '"verified":0[,}]' <<<"$last"; then
        rel=unused
    else
        rel=unknown
    fi
}

# 1. A keystore already: check that it is this ledger's, and stop.
if [[ -e "$keystore" ]]; then
    for ((i = 1; i <= attempts; i++)); do
        relation "$keystore"
        case "$rel" in
            match)
                log "$keystore is the keystore of ledger ${KEYLEDGER_LEDGER:-default}; root key $(root_of "$keystore"); nothing to do"
                exit 0
                ;;
            missing | unused)
                die "$keystore exists but the ledger on $nats is missing, empty or has another root key: \
the NATS volumes were reset or the keystore volume belongs to another deployment. Not initialising again. \
verify said: $last"
                ;;
            unknown) sleep "$retry_s" ;;
        esac
    done
    die "could not verify $keystore against the ledger after $attempts attempts: $last"
fi

# 2. No keystore: resolve a staged one, then initialise.
for ((i = 1; i <= attempts; i++)); do
    if [[ -e "$staged" ]]; then
        relation "$staged"
        case "$rel" in
            match)
                mv -f -- "$staged" "$keystore"
                sync
                log "adopted $staged from an interrupted run: the ledger's genesis is signed by its root key $(root_of "$keystore")"
                exit 0
                ;;
            missing | unused)
                aside="$staged.unused-$(date -u +%Y%m%dT%H%M%SZ)-$i"
                mv -- "$staged" "$aside"
                log "moved $staged aside to $aside: it never became the ledger's keystore"
                ;;
            unknown)
                log "attempt $i/$attempts: cannot tell yet whether $staged is the ledger's keystore; retrying"
                sleep "$retry_s"
                continue
                ;;
        esac
    fi

    log "attempt $i/$attempts: $kl init --replicas $replicas --keystore $staged --passphrase-env KEYLEDGER_PASSPHRASE"
    rc=0
    out="$("$kl" init --replicas "$replicas" --keystore "$staged" \
        --passphrase-env KEYLEDGER_PASSPHRASE 2>&1)" || rc=$?
    printf '%s\n' "$out"
    if ((rc == 0)); then
        mv -f -- "$staged" "$keystore"
        sync
        log "ledger ${KEYLEDGER_LEDGER:-default} initialised; keystore $keystore (pin the root key above for audits)"
        exit 0
    fi
    if grep -qF 'refusing to initialise it again' <<<"$out"; then
        [[ -e "$staged" ]] && mv -- "$staged" "$staged.unused-$(date -u +%Y%m%dT%H%M%SZ)-$i"
        die "the ledger already exists on $nats but $keystore does not: restore the keystore from its backup into the keystore volume"
    fi
    sleep "$retry_s"
done
die "keyledger init did not succeed after $attempts attempts"
