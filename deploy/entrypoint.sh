#!/usr/bin/env bash
# Entrypoint of the keyledger image (installed as /usr/local/bin/keyledger-entrypoint).
#
# Reads the passphrases from compose/swarm secret files into the environment variables that
# `keyledger ... --passphrase-env VAR` reads, then runs
#   - `keyledger-init` (deploy/init-ledger.sh) when the first argument is `init-ledger`,
#   - `keyledger "$@"` otherwise (`serve ...`, `issuer ...`, `token ...`, `key ...`).
#
#   secret file (override the path with ...)                          environment variable
#   /run/secrets/keyledger_passphrase         (KEYLEDGER_PASSPHRASE_FILE)          KEYLEDGER_PASSPHRASE
#   /run/secrets/keyledger_issuer_passphrase  (KEYLEDGER_ISSUER_PASSPHRASE_FILE)   KEYLEDGER_ISSUER_PASSPHRASE
#
# A missing file leaves the variable as it is (unset, or whatever the caller passed with -e); an
# unreadable or empty file is an error. Trailing newlines are stripped (`echo ... > file` is
# fine). The values are never printed.
set -euo pipefail

die() {
    echo "keyledger-entrypoint: $*" >&2
    exit 2
}

load_secret() {
    local var="$1" file="$2" value
    [[ -e "$file" ]] || return 0
    [[ -r "$file" ]] || die "cannot read $file as uid $(id -u): compose bind-mounts secret files with \
their host owner and mode; make it readable for this uid (see deploy/README.md)"
    value="$(cat -- "$file")"
    [[ -n "$value" ]] || die "$file is empty"
    export "$var=$value"
}

load_secret KEYLEDGER_PASSPHRASE \
    "${KEYLEDGER_PASSPHRASE_FILE:-/run/secrets/keyledger_passphrase}"
load_secret KEYLEDGER_ISSUER_PASSPHRASE \
    "${KEYLEDGER_ISSUER_PASSPHRASE_FILE:-/run/secrets/keyledger_issuer_passphrase}"

if [[ "${1:-}" == "init-ledger" ]]; then
    shift
    exec keyledger-init "$@"
fi
exec keyledger "$@"
