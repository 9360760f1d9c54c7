#!/usr/bin/env bash
# Rebuild cellscope's Linux-kernel training corpus from Debian's
# linux-source-6.1 package.
#
# Usage: scripts/linux-corpus.sh [OUT_DIR]
#   OUT_DIR defaults to data/linux under the repository root (data/ is
#   git-ignored). It receives corpus.txt, train.txt, val.txt and test.txt.
#
# Selection and split rule (implemented in scripts/linux_corpus.py):
#   * subsystems in this order: kernel, mm, fs/ext4, net/ipv4, drivers/char;
#     in each, every regular (non-symlink) *.c and *.h file at any depth,
#     sorted by path in byte order (LC_ALL=C);
#   * a file holding any byte other than TAB, LF or 0x20-0x7E is dropped whole;
#   * whole files are appended while the subsystem's running total is below
#     1,210,000 bytes (the file that crosses it is included, then the next
#     subsystem starts); files are joined with nothing between them;
#   * the corpus is cut into 100,000-byte blocks; in each block bytes
#     [0, 90,000) go to train, [90,000, 95,000) to val and [95,000, 100,000)
#     to test (the last, shorter block likewise).
#
# With linux-source-6.1 6.1.192-3 this yields the sizes and sha256 values in
# EXPECTED_* below (97 distinct characters). Another package version gives a
# different corpus: the script then warns but still succeeds.
#
# Environment:
#   LINUX_SOURCE_VERSION  Debian version to install when the tarball is
#                         missing (default 6.1.192-3; if that exact version
#                         cannot be installed, the newest available is used).
set -euo pipefail

PKG=linux-source-6.1
TARBALL=/usr/src/linux-source-6.1.tar.xz
TOPDIR=linux-source-6.1            # top-level directory inside the tarball
SUBSYSTEMS=(kernel mm fs/ext4 net/ipv4 drivers/char)
WANT_VERSION="${LINUX_SOURCE_VERSION:-6.1.192-3}"

# Expected results for linux-source-6.1 6.1.192-3.
declare -A EXPECTED_SIZE=(
    [corpus]=6188875 [train]=5578875 [val]=305000 [test]=305000
)
declare -A EXPECTED_SHA=(
    [corpus]=cf0f66b7dc031250cb561a5a03b59d2601ecdd3977f95f18cfc7c4bbecd76325
    [train]=2b4f0a18a22b3166349932e8b5b467e306fe1efbfe4fb566333e2d4a77363cec
    [val]=1625e9de03aff206f1273acedae77f75b61c854fdfaf65d006f2f1693e584ec9
    [test]=28eff01566478901198ef5f462c81f77bf3039a00cddcc543f24fcf777fbadb4
)
EXPECTED_DISTINCT=97

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
OUT_DIR="${1:-$REPO_ROOT/data/linux}"
PYTHON="${PYTHON:-python3}"

log() { printf '%s\n' "$*" >&2; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }

start=$SECONDS

# --- 1. Make sure the source tarball is installed ---------------------------
if [[ ! -f "$TARBALL" ]]; then
    log "$TARBALL not found; installing $PKG"
    SUDO=()
    if [[ "$(id -u)" -ne 0 ]]; then
        SUDO=(sudo)
    fi
    apt_install() {
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"
    }
    # Prefer the exact version the expected hashes were made with; a stale
    # package list may only offer an older one, so update and retry on
    # failure, and as a last resort take whatever version is available.
    if ! apt_install "$PKG=$WANT_VERSION"; then
        log "install failed; running apt-get update and retrying"
        "${SUDO[@]}" apt-get update
        if ! apt_install "$PKG=$WANT_VERSION"; then
            warn "$PKG=$WANT_VERSION is not available; installing the newest $PKG"
            apt_install "$PKG"
        fi
    fi
fi
[[ -f "$TARBALL" ]] || { log "error: $TARBALL still missing"; exit 1; }

PKG_VERSION="$(dpkg-query -W -f='${Version}' "$PKG" 2>/dev/null || echo unknown)"
log "using $TARBALL ($PKG $PKG_VERSION)"

# --- 2. Extract only the needed subtrees (just their .c/.h members) ---------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/linux-corpus.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

patterns=()
for sub in "${SUBSYSTEMS[@]}"; do
    patterns+=("$TOPDIR/$sub/*.[ch]")
done
log "extracting ${SUBSYSTEMS[*]} from $TARBALL"
tar -xJf "$TARBALL" -C "$WORK" --wildcards "${patterns[@]}"

SRC="$WORK/$TOPDIR"
for sub in "${SUBSYSTEMS[@]}"; do
    [[ -d "$SRC/$sub" ]] || { log "error: $sub/ missing from $TARBALL"; exit 1; }
done

# --- 3. Select, concatenate and split ---------------------------------------
mkdir -p "$OUT_DIR"
# LC_ALL=C for good measure; the Python code sorts raw bytes regardless.
results="$(LC_ALL=C "$PYTHON" "$SCRIPT_DIR/linux_corpus.py" "$SRC" "$OUT_DIR")"

# --- 4. Report and compare against the expected values ----------------------
mismatch=0
echo "output: $OUT_DIR"
while read -r name size sha; do
    if [[ "$name" == distinct_chars ]]; then
        echo "distinct characters: $size"
        if [[ "$size" != "$EXPECTED_DISTINCT" ]]; then
            warn "expected $EXPECTED_DISTINCT distinct characters, got $size"
            mismatch=1
        fi
        continue
    fi
    printf '%-10s %9s bytes  sha256 %s\n' "$name.txt" "$size" "$sha"
    if [[ "$size" != "${EXPECTED_SIZE[$name]}" || "$sha" != "${EXPECTED_SHA[$name]}" ]]; then
        warn "$name.txt differs from the expected ${EXPECTED_SIZE[$name]} bytes / sha256 ${EXPECTED_SHA[$name]}"
        mismatch=1
    fi
done <<<"$results"

if [[ "$mismatch" -ne 0 ]]; then
    warn "corpus differs from the reference built with $PKG 6.1.192-3; installed: $PKG $PKG_VERSION"
    warn "to reproduce exactly: apt-get install $PKG=6.1.192-3 (then rerun)"
else
    echo "all outputs match the reference ($PKG $PKG_VERSION)"
fi
echo "took $((SECONDS - start)) s"
