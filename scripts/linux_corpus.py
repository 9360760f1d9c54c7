#!/usr/bin/env python3
"""Build the cellscope Linux-kernel training corpus from an extracted source tree.

Usage: linux_corpus.py SRC_ROOT OUT_DIR

SRC_ROOT is the top of an extracted linux-source tree (the directory that
contains kernel/, mm/, fs/ext4/, ...). OUT_DIR receives corpus.txt, train.txt,
val.txt and test.txt. Called by scripts/linux-corpus.sh, which also checks the
hashes; this file only implements the selection and split rule:

* subsystems, in this order: kernel, mm, fs/ext4, net/ipv4, drivers/char;
* in each, every regular (non-symlink) *.c / *.h file at any depth, sorted by
  its path relative to SRC_ROOT in byte order (like `LC_ALL=C sort`);
* a file holding any byte other than TAB, LF or 0x20-0x7E is dropped whole;
* whole files are appended while the subsystem's running total is below
  SUBSYSTEM_BUDGET bytes (the file that crosses it is still included, then the
  next subsystem starts); files are joined with nothing between them;
* split: the corpus is cut into 100,000-byte blocks; in each block bytes
  [0, 90,000) go to train, [90,000, 95,000) to val, [95,000, 100,000) to test
  (the final, shorter block likewise).

Prints one line per output: "<name> <bytes> <sha256>", then
"distinct_chars <n>".
"""

import hashlib
import os
import sys

SUBSYSTEMS = ["kernel", "mm", "fs/ext4", "net/ipv4", "drivers/char"]
SUBSYSTEM_BUDGET = 1_210_000
BLOCK = 100_000
TRAIN_END = 90_000
VAL_END = 95_000

# TAB, LF and printable ASCII 0x20..0x7E.
ALLOWED = frozenset([0x09, 0x0A]) | frozenset(range(0x20, 0x7F))
# bytes.translate(None, delete) removes every allowed byte; anything left over
# is a disallowed byte.
ALLOWED_BYTES = bytes(sorted(ALLOWED))


def is_clean(data: bytes) -> bool:
    return not data.translate(None, ALLOWED_BYTES)


def list_sources(src_root: bytes, subsystem: bytes) -> list:
    """All regular, non-symlink *.c/*.h files under subsystem, as paths
    relative to src_root, sorted in byte order."""
    found = []
    top = os.path.join(src_root, subsystem)
    # followlinks=False: never descend through symlinked directories.
    for dirpath, _dirnames, filenames in os.walk(top, followlinks=False):
        for name in filenames:
            if not (name.endswith(b".c") or name.endswith(b".h")):
                continue
            full = os.path.join(dirpath, name)
            if os.path.islink(full) or not os.path.isfile(full):
                continue
            found.append(os.path.relpath(full, src_root))
    # Python sorts bytes objects bytewise, i.e. like LC_ALL=C sort.
    found.sort()
    return found


def build_corpus(src_root: bytes) -> bytes:
    parts = []
    for subsystem in SUBSYSTEMS:
        total = 0
        dropped = 0
        used = 0
        for rel in list_sources(src_root, subsystem.encode()):
            if total >= SUBSYSTEM_BUDGET:
                break
            with open(os.path.join(src_root, rel), "rb") as fh:
                data = fh.read()
            if not is_clean(data):
                dropped += 1
                continue
            parts.append(data)
            total += len(data)
            used += 1
        print(
            f"# {subsystem}: {used} files, {total} bytes ({dropped} non-ASCII files dropped)",
            file=sys.stderr,
        )
    return b"".join(parts)


def split(corpus: bytes):
    train, val, test = [], [], []
    for start in range(0, len(corpus), BLOCK):
        block = corpus[start : start + BLOCK]
        train.append(block[:TRAIN_END])
        val.append(block[TRAIN_END:VAL_END])
        test.append(block[VAL_END:])
    return b"".join(train), b"".join(val), b"".join(test)


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    src_root = os.fsencode(sys.argv[1])
    out_dir = sys.argv[2]
    os.makedirs(out_dir, exist_ok=True)

    corpus = build_corpus(src_root)
    train, val, test = split(corpus)
    assert len(train) + len(val) + len(test) == len(corpus)

    for name, data in [
        ("corpus", corpus),
        ("train", train),
        ("val", val),
        ("test", test),
    ]:
        path = os.path.join(out_dir, f"{name}.txt")
        tmp = path + ".tmp"
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
        print(f"{name} {len(data)} {hashlib.sha256(data).hexdigest()}")
    print(f"distinct_chars {len(set(corpus))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
