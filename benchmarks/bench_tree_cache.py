"""The tree cache's encoding against the ``marshal`` one it replaced (issue 14).

    python benchmarks/bench_tree_cache.py [--paths 300000] [--runs 15]

A generated tree of ``--paths`` paths (project-like names, one in ten a directory, realistic
sizes, modes, nanosecond times and inode numbers). Encode and decode of each format, both
zstd level 1 with a checksum as the cache stores them, alternated within every repetition;
the minimum and median of process CPU time (the machine is shared: wall time would measure
the neighbours). ``marshal`` is used here only to measure the format it was: the inventory
never loads it.
"""

from __future__ import annotations

import argparse
import marshal
import random
import statistics
import time
from collections.abc import Callable

import zstandard

from backup.inventory.tree_codec import TREE_FORMAT, _c_payload, decode_tree, encode_tree

Tree = dict[bytes, tuple[str, int, int, int, int, int]]


def make_tree(n: int, seed: int = 1) -> Tree:
    rng = random.Random(seed)
    base = 1_700_000_000 * 10**9
    state: Tree = {}
    for i in range(n):
        d = f"project{i // 5000}/src/module{(i // 100) % 50}/pkg{(i // 10) % 10}"
        path = f"{d}/file_{i}_{rng.randrange(10**6)}.py".encode()
        is_file = i % 10 != 0
        state[path] = (
            "file" if is_file else "dir",
            rng.randrange(10**6) if is_file else 0,
            0o644 if is_file else 0o755,
            base + rng.randrange(10**17),
            base + rng.randrange(10**17),
            1_000_000 + i,
        )
    return state


def marshal_encode(state: Tree) -> bytes:
    return zstandard.ZstdCompressor(level=1, write_checksum=True).compress(marshal.dumps(state))


def marshal_decode(blob: bytes) -> Tree:
    return marshal.loads(zstandard.ZstdDecompressor().decompress(blob))  # type: ignore[no-any-return]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--paths", type=int, default=300_000)
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    state = make_tree(args.paths)
    old, new = marshal_encode(state), encode_tree(state)
    assert marshal_decode(old) == state and decode_tree(TREE_FORMAT, new) == state
    cases: dict[str, Callable[[], object]] = {
        "marshal encode": lambda: marshal_encode(state),
        f"{TREE_FORMAT} encode": lambda: encode_tree(state),
        "marshal decode": lambda: marshal_decode(old),
        f"{TREE_FORMAT} decode": lambda: decode_tree(TREE_FORMAT, new),
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.runs):
        for name, fn in cases.items():
            t = time.process_time()
            fn()
            times[name].append(1000 * (time.process_time() - t))
    print(f"{args.paths} paths, {args.runs} runs, C encoder: {_c_payload is not None}")
    for name, ts in times.items():
        print(f"{name:18s} min {min(ts):7.1f} ms   median {statistics.median(ts):7.1f} ms")
    for op in ("encode", "decode"):
        ratio = min(times[f"{TREE_FORMAT} {op}"]) / min(times[f"marshal {op}"])
        print(f"{op}: {TREE_FORMAT} / marshal = {ratio:.2f}x (minimums)")
    print(
        f"size: marshal {len(old):,} B, {TREE_FORMAT} {len(new):,} B ({len(new) / len(old):.2f}x)"
    )


if __name__ == "__main__":
    main()
