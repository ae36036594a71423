#!/usr/bin/env bash
# Installs Debian's `chromium` (headless rendering of the compliance report in
# tests/tests/report.rs) unless /usr/bin/chromium is already there, and prints the
# binary's path on stdout. Non-interactive, idempotent, safe to run concurrently
# (an flock serialises installers; apt's own lock is waited for). Uses sudo only
# when not root. Fonts are installed too, or the screenshot shows no text.
#
#   scripts/install-chromium.sh            # prints /usr/bin/chromium
#
# Exit status non-zero, with the reason on stderr, when Chromium cannot be had.
set -euo pipefail

BIN="/usr/bin/chromium"
PACKAGES=(chromium fonts-dejavu-core fonts-liberation)

die() {
    echo "install-chromium: $*" >&2
    exit 1
}

have() {
    [[ -x "$BIN" ]] && "$BIN" --version >/dev/null 2>&1
}

if ! have; then
    if [[ "$(id -u)" == 0 ]]; then
        SUDO=()
    elif command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo -n)
    else
        die "$BIN is missing and installing it needs root (no sudo here)"
    fi
    command -v apt-get >/dev/null 2>&1 || die "$BIN is missing and there is no apt-get"
    LOCK="${TMPDIR:-/tmp}/keyledger-install-chromium.lock"
    exec 9>>"$LOCK"
    flock -w 900 9 || die "timed out waiting for another installer ($LOCK)"
    if ! have; then
        APT=("${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -y -q
            -o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confdef
            -o Dpkg::Options::=--force-confold)
        echo "install-chromium: installing ${PACKAGES[*]} with apt-get" >&2
        # Try with the package lists as they are; if that fails (stale or missing lists),
        # refresh them once and try again.
        if ! "${APT[@]}" install --no-install-recommends "${PACKAGES[@]}" >&2; then
            "${APT[@]}" update >&2 || die "apt-get update failed"
            "${APT[@]}" install --no-install-recommends "${PACKAGES[@]}" >&2 \
                || die "apt-get install ${PACKAGES[*]} failed"
        fi
    fi
    have || die "$BIN still missing or not runnable after installing"
fi

echo "$BIN"
