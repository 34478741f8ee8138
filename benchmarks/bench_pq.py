"""What a post-quantum hybrid recipient costs per file, beside X25519: the time to write an
age header (wrap the file key), to read one (unwrap it and check the MAC), and its size.
The payload (STREAM ChaCha20-Poly1305) is the same for every recipient type, so the cost is
per file, not per byte. The two types are measured side by side, interleaved round by round,
and each figure is the median over the rounds of the mean per file within a round.

    python3 benchmarks/bench_pq.py [--files 200] [--rounds 7] [--json out.json]
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import statistics
import time

from backup.crypto.age import (
    AgeReader,
    AgeWriter,
    HybridIdentity,
    Identity,
    Recipient,
    X25519Identity,
)


def one_round(
    recipients: list[Recipient], ident: Identity, files: int
) -> tuple[float, float, float, float, int]:
    """Returns: per file, encrypt wall and CPU seconds, decrypt wall and CPU seconds, and the
    header size in bytes."""
    blobs = []
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(files):
        out = io.BytesIO()
        with AgeWriter(out, recipients) as w:
            w.write(b"x")
        blobs.append(out.getvalue())
    w1, c1 = time.perf_counter(), time.process_time()
    for b in blobs:
        AgeReader(io.BytesIO(b), [ident]).close()
    w2, c2 = time.perf_counter(), time.process_time()
    header = blobs[0].index(b"\n---") + len(b"\n--- ") + 43 + 1  # the MAC line included
    return (w1 - w0) / files, (c1 - c0) / files, (w2 - w1) / files, (c2 - c1) / files, header


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json")
    args = ap.parse_args()
    x, pq = X25519Identity.generate(), HybridIdentity.generate()
    kinds: dict[str, tuple[list[Recipient], Identity]] = {
        "x25519": ([x.recipient()], x),
        "x25519 x2": ([x.recipient(), X25519Identity.generate().recipient()], x),
        "mlkem768x25519": ([pq.recipient()], pq),
        "mlkem768x25519 x2": ([pq.recipient(), HybridIdentity.generate().recipient()], pq),
    }
    samples: dict[str, list[tuple[float, float, float, float, int]]] = {k: [] for k in kinds}
    for _ in range(args.rounds):
        for k, (r, i) in kinds.items():
            samples[k].append(one_round(r, i, args.files))
    result = {}
    for k, rows in samples.items():
        cols = list(zip(*rows, strict=True))
        result[k] = {
            "encrypt_us": statistics.median(cols[0]) * 1e6,
            "encrypt_cpu_us": statistics.median(cols[1]) * 1e6,
            "decrypt_us": statistics.median(cols[2]) * 1e6,
            "decrypt_cpu_us": statistics.median(cols[3]) * 1e6,
            "header_bytes": rows[0][4],
        }
    base = result["x25519"]
    for k, v in result.items():
        print(
            f"{k:18s} encrypt {v['encrypt_us']:7.1f} us (cpu {v['encrypt_cpu_us']:7.1f})"
            f"  decrypt {v['decrypt_us']:7.1f} us (cpu {v['decrypt_cpu_us']:7.1f})"
            f"  header {v['header_bytes']:5d} B"
            f"  x{v['encrypt_us'] / base['encrypt_us']:.1f} / x{v['decrypt_us'] / base['decrypt_us']:.1f}"
        )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"peak RSS {rss / 1024:.0f} MiB; {args.files} files x {args.rounds} rounds")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"result": result, "peak_rss_kib": rss, **vars(args)}, f, indent=1)


if __name__ == "__main__":
    main()
