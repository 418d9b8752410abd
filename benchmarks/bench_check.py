#!/usr/bin/env python3
"""Benchmark: `migconform check` on a RAM-heavy stream from a guest with random memory,
against `cat FILE > /dev/null` in the same run (same file, same page cache).

    .venv/bin/python benchmarks/bench_check.py [--mem-mb 2048] [--qemu 10.0] [--runs 3] [--json]

The capture (a memory-backend file of random bytes, migrated by a real QEMU) is cached
under the project cache and reused. Reported: best wall time of each, the ratio (share of
cat's throughput the checker reaches) and the checker's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conformance.qemu import capture_stream, discover  # noqa: E402
from conformance.qemu.binaries import cache_dir  # noqa: E402
from conformance.qemu.devices import make_ram_file  # noqa: E402


def timed(argv: list[str], stdout=subprocess.DEVNULL) -> tuple[float, int, int]:
    """(wall seconds, peak RSS in KiB, exit status) of one child process."""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdout=stdout)
    _, status, usage = os.wait4(p.pid, 0)
    return time.perf_counter() - t0, usage.ru_maxrss, os.waitstatus_to_exitcode(status)


def capture(mem_mb: int, version: str | None) -> Path:
    found = discover()
    if not found:
        sys.exit("bench: no QEMU found (run scripts/setup.sh)")
    version = version or max(found, key=lambda v: tuple(int(x) for x in v.split(".")))
    binary = found[version]
    folder = cache_dir() / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    stream = folder / f"random-{mem_mb}M-qemu-{binary.full_version}.mig"
    if stream.is_file() and stream.stat().st_size > mem_mb << 20:
        return stream
    ram = folder / f"random-{mem_mb}M.ram"
    if not ram.is_file() or ram.stat().st_size != mem_mb << 20:
        print(f"bench: writing {mem_mb} MiB of random guest RAM", file=sys.stderr)
        make_ram_file(ram, mem_mb, seed=1)
    print(f"bench: capturing a {mem_mb} MiB guest from QEMU {binary.full_version}", file=sys.stderr)
    capture_stream(binary, stream, machine="pc-i440fx-7.2", mem_mb=mem_mb, ram_file=ram, timeout=600)
    return stream


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mem-mb", type=int, default=2048)
    ap.add_argument("--qemu", default=None, help="QEMU version making the capture (default: newest found)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    stream = capture(args.mem_mb, args.qemu)
    size = stream.stat().st_size
    migconform = [sys.executable, "-m", "conformance.cli", "check", str(stream)]
    cat = ["cat", str(stream)]
    timed(cat)  # warm the page cache: both read the same cached file
    cat_runs = [timed(cat)[0] for _ in range(args.runs)]
    check_runs = [timed(migconform) for _ in range(args.runs)]
    if any(code != 0 for _, _, code in check_runs):
        sys.exit(f"bench: migconform check did not find {stream} conforming")
    best_cat = min(cat_runs)
    best_check = min(t for t, _, _ in check_runs)
    peak_rss_mb = max(rss for _, rss, _ in check_runs) / 1024
    result = {
        "stream": str(stream),
        "bytes": size,
        "cat_s": round(best_cat, 3),
        "check_s": round(best_check, 3),
        "share_of_cat_throughput": round(best_cat / best_check, 3),
        "check_mib_per_s": round(size / best_check / (1 << 20)),
        "check_peak_rss_mb": round(peak_rss_mb, 1),
        "runs": args.runs,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"stream        {stream.name}: {size / (1 << 30):.2f} GiB")
        print(f"cat           {best_cat:.3f} s")
        print(f"check         {best_check:.3f} s  ({result['check_mib_per_s']} MiB/s, peak RSS {peak_rss_mb:.0f} MB)")
        print(f"check reaches {result['share_of_cat_throughput']:.0%} of cat's throughput (target 25%, aim 45%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
