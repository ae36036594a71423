#!/usr/bin/env bash
# Installs the pinned Python dependencies of examples/python (the official NATS
# client, PyPI `nats-py`) into <repo>/.tools/python/ unless that directory
# already provides exactly this version, and prints the directory's path on
# stdout (use it as PYTHONPATH). Idempotent and safe to run concurrently: pip
# installs into a unique staging directory that is then renamed into place
# atomically (the same scheme as scripts/install-nats-server.sh). A copy of
# another version (an older pin) is moved aside and replaced.
set -euo pipefail

NATS_PY_VERSION="2.16.0"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
DEST="$TOOLS/python"

die() {
    echo "install-python-deps: $*" >&2
    exit 1
}

command -v python3 >/dev/null 2>&1 || die "python3 is not installed (needed for examples/python)"

# True if `dir` provides nats-py $NATS_PY_VERSION itself (not some other copy on sys.path).
provides() {
    python3 - "$1" "$NATS_PY_VERSION" <<'PY' >/dev/null 2>&1
import os, sys
where, want = os.path.realpath(sys.argv[1]), sys.argv[2]
sys.path.insert(0, where)
import nats
import nats.aio.client as client
assert os.path.realpath(nats.__file__).startswith(where + os.sep), nats.__file__
assert client.__version__ == want, client.__version__
PY
}

if ! provides "$DEST"; then
    mkdir -p "$TOOLS"
    STAGING="$(mktemp -d "$TOOLS/.install-python-XXXXXX")"
    STALE=""
    trap 'rm -rf "$STAGING" ${STALE:+"$STALE"}' EXIT
    echo "install-python-deps: installing nats-py==$NATS_PY_VERSION into $DEST" >&2
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check \
        --no-input --target "$STAGING" "nats-py==$NATS_PY_VERSION" >&2 \
        || die "pip install nats-py==$NATS_PY_VERSION failed"
    provides "$STAGING" || die "the staged install in $STAGING does not import nats-py $NATS_PY_VERSION"
    chmod 755 "$STAGING" # mktemp creates it 0700
    if [[ -e "$DEST" ]] && ! provides "$DEST"; then
        # Another version or a broken copy: move it aside in one rename (another installer
        # may have done so first, hence no error check), then delete it.
        STALE="$(mktemp -d "$TOOLS/.stale-python-XXXXXX")"
        mv -T "$DEST" "$STALE/python" 2>/dev/null || true
    fi
    # `mv -T` renames the directory itself and fails if DEST exists and is not
    # empty; in that case another installer won the race and its copy is used.
    if ! mv -T "$STAGING" "$DEST" 2>/dev/null; then
        provides "$DEST" || die "could not move $STAGING to $DEST"
    fi
fi

provides "$DEST" || die "$DEST does not provide nats-py $NATS_PY_VERSION"
echo "$DEST"
