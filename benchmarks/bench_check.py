#!/usr/bin/env python3
"""Benchmarks of `migconform check`, each against a baseline timed in the same run (the
machine may be shared: the ratios are what count). Every figure is the best of --runs.

    .venv/bin/python benchmarks/bench_check.py [--only startup,file,pipe,multifd,ram-model]
                                               [--mem-mb 2048] [--big-mb 8192] [--runs 3] [--json]

  startup    `python -c pass` vs `migconform --help` and `check` of a sub-MiB real stream
  file       2 GiB main streams from each QEMU found (and --big-mb, from the newest) vs `cat F`
  pipe       `cat F | migconform check -` vs `cat F > /dev/null` (and `cat F | cat`, any pipe reader's floor)
  multifd    a 4-channel multifd capture (check DIR) vs `cat` of all its files
  ram-model  check DIR --ram-model: time and peak RSS; and the RAM model's state for a
             4 GiB guest fed page by page (peak RSS of that process)

Captures come from real QEMU (benchmarks/captures.py), cached under the project cache.
Targets (issue 13): file check <= 2/3 of cat's time and <= 64 MB peak RSS; pipe >= 60% of
cat's throughput; --help / small check within 0.1 s / 0.15 s of `python -c pass`; the big
stream linear with the same RSS; multifd >= 1x cat; --ram-model on 4 GiB under 300 MB.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import captures  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
ENV.pop("PYTHONDONTWRITEBYTECODE", None)  # installed code has its .pyc: so does the measured one
MIGCONFORM = [sys.executable, "-m", "conformance.cli"]


CPU: dict[tuple, float] = {}  # argv -> best CPU seconds (user + system, children included)


def timed(argv: list[str], *, shell: bool = False) -> tuple[float, int, int, float]:
    """(wall seconds, peak RSS in KiB of the process or its largest child, exit status, CPU
    seconds). CPU time says what the work costs when other jobs share the machine."""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv if not shell else argv[0], stdout=subprocess.DEVNULL, shell=shell, env=ENV)
    _, status, usage = os.wait4(p.pid, 0)
    return (time.perf_counter() - t0, usage.ru_maxrss, os.waitstatus_to_exitcode(status),
            usage.ru_utime + usage.ru_stime)


def best(argv: list[str], runs: int, *, shell: bool = False, ok=(0,)) -> tuple[float, float]:
    """(best wall seconds, peak RSS MB over the runs); the best CPU time goes to CPU."""
    results = [timed(argv, shell=shell) for _ in range(runs)]
    bad = [code for _, _, code, _ in results if code not in ok]
    if bad:
        sys.exit(f"bench: {' '.join(argv)} exited {bad[0]}")
    CPU[tuple(argv)] = min(c for *_, c in results)
    return min(t for t, *_ in results), max(r for _, r, _, _ in results) / 1024


def rows_startup(runs: int) -> list[dict]:
    small = Path(tempfile.mkdtemp()) / "main.bin"
    small.write_bytes(lzma.decompress((ROOT / "tests/data/multifd/qemu100-i440fx-10.0.main.bin.xz").read_bytes()))
    timed([*MIGCONFORM, "check", str(small)])  # compile the .pyc once
    base, _ = best([sys.executable, "-c", "pass"], runs * 3)
    base_cpu = CPU[(sys.executable, "-c", "pass")]
    out = []
    for label, argv, budget, ok in (("--help", [*MIGCONFORM, "--help"], 0.1, (0,)),
                                    (f"check {small.stat().st_size >> 10} KiB stream", [*MIGCONFORM, "check", str(small)],
                                     0.15, (0, 1))):
        t, rss = best(argv, runs * 3, ok=ok)
        out.append({"bench": f"start-up: {label}", "baseline": "python -c pass", "baseline_s": base, "s": t,
                    "over_baseline_s": t - base, "target": f"<= +{budget} s", "met": t - base <= budget,
                    "peak_rss_mb": rss, "baseline_cpu_s": base_cpu, "cpu_s": CPU[tuple(argv)]})
    small.unlink()
    return out


def _file_row(label: str, stream: Path, runs: int) -> dict:
    size = stream.stat().st_size
    timed(["cat", str(stream)])  # the page cache holds it for both
    cat, _ = best(["cat", str(stream)], runs)
    t, rss = best([*MIGCONFORM, "check", str(stream)], runs)
    return {"bench": label, "bytes": size, "baseline": "cat FILE", "baseline_s": cat, "s": t,
            "baseline_cpu_s": CPU[("cat", str(stream))], "cpu_s": CPU[(*MIGCONFORM, "check", str(stream))],
            "time_vs_cat": t / cat, "mib_per_s": size / t / (1 << 20), "peak_rss_mb": rss,
            "target": "<= 0.67 x cat, <= 64 MB", "met": t <= cat * 2 / 3 and rss <= 64}


def rows_file(mem_mb: int, big_mb: int | None, runs: int) -> list[dict]:
    out = []
    for version in sorted(captures.discover()):
        stream = captures.main_stream(mem_mb, version)
        out.append(_file_row(f"file: {mem_mb} MiB guest from {version}", stream, runs))
    if big_mb:
        stream = captures.main_stream(big_mb)
        row = _file_row(f"file: {big_mb} MiB guest (newest QEMU)", stream, runs)
        small = next((r for r in out if r["bench"].endswith(max(captures.discover(), key=captures.version_key))), out[-1])
        row["per_byte_vs_small"] = (row["s"] / row["bytes"]) / (small["s"] / small["bytes"])
        row["target"] = "linear (per byte ~1 x the small one), same RSS"
        row["met"] = row["per_byte_vs_small"] <= 1.2 and row["peak_rss_mb"] <= small["peak_rss_mb"] + 8
        out.append(row)
    return out


def rows_pipe(mem_mb: int, runs: int) -> list[dict]:
    stream = captures.main_stream(mem_mb)
    cmd = " ".join(MIGCONFORM)
    timed(["cat", str(stream)])
    cat, _ = best(["cat", str(stream)], runs)
    t, rss = best([f"cat '{stream}' | {cmd} check -"], runs, shell=True)
    # the floor of any reader of a pipe: cat reading it (the bytes cross the pipe once more)
    floor, _ = best([f"cat '{stream}' | cat > /dev/null"], runs, shell=True)
    return [{"bench": f"pipe: {mem_mb} MiB guest", "bytes": stream.stat().st_size, "baseline": "cat FILE > /dev/null",
             "baseline_s": cat, "s": t, "throughput_vs_cat": cat / t, "peak_rss_mb": rss,
             "cat_through_a_pipe_s": floor, "cat_through_a_pipe_vs_cat": cat / floor,
             "baseline_cpu_s": CPU[("cat", str(stream))], "cpu_s (cat + check)": CPU[(f"cat '{stream}' | {cmd} check -",)],
             "target": ">= 0.6 x cat's throughput", "met": cat / t >= 0.6}]


def rows_multifd(mem_mb: int, runs: int, ram_model: bool, multifd: bool) -> list[dict]:
    d = captures.multifd_capture(mem_mb, None, 4)
    files = sorted(str(p) for p in d.iterdir() if p.name.startswith(("main", "multifd")))
    size = sum(os.path.getsize(f) for f in files)
    timed(["cat", *files])
    cat, _ = best(["cat", *files], runs)
    out = []
    if multifd:
        t, rss = best([*MIGCONFORM, "check", str(d)], runs)
        out.append({"bench": f"multifd: 4 channels, {mem_mb} MiB guest", "bytes": size, "baseline": "cat all files",
                    "baseline_s": cat, "s": t, "throughput_vs_cat": cat / t, "peak_rss_mb": rss,
                    "baseline_cpu_s": CPU[("cat", *files)], "cpu_s": CPU[(*MIGCONFORM, "check", str(d))],
                    "target": ">= 1 x cat's throughput", "met": cat / t >= 1})
    if ram_model:
        t, rss = best([*MIGCONFORM, "check", str(d), "--ram-model"], 1)
        out.append({"bench": f"--ram-model: 4 channels, {mem_mb} MiB guest", "bytes": size, "baseline": "cat all files",
                    "baseline_s": cat, "s": t, "peak_rss_mb": rss, "target": "RSS grows with the guest: see 4 GiB row",
                    "met": None})
        t, rss = best([sys.executable, str(ROOT / "benchmarks/ram_model_memory.py"), "4096"], 1)
        base, base_rss = best([sys.executable, str(ROOT / "benchmarks/ram_model_memory.py"), "0"], 1)
        out.append({"bench": "RAM model state: 4 GiB guest, every page written (MainPage + 4 channels)",
                    "baseline": "the same process with no pages", "baseline_s": base, "s": t, "peak_rss_mb": rss,
                    "baseline_rss_mb": base_rss, "target": "< 300 MB", "met": rss < 300})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="startup,file,pipe,multifd,ram-model")
    ap.add_argument("--mem-mb", type=int, default=2048)
    ap.add_argument("--big-mb", type=int, default=0, help="also an N MiB guest's stream (8192: the linearity check)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    only = set(args.only.split(","))
    rows: list[dict] = []
    if "startup" in only:
        rows += rows_startup(args.runs)
    if "file" in only:
        rows += rows_file(args.mem_mb, args.big_mb or None, args.runs)
    if "pipe" in only:
        rows += rows_pipe(args.mem_mb, args.runs)
    if "multifd" in only or "ram-model" in only:
        rows += rows_multifd(args.mem_mb, args.runs, "ram-model" in only, "multifd" in only)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        figures = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()
                            if k not in ("bench", "target", "met", "baseline"))
        verdict = "" if r["met"] is None else ("MET" if r["met"] else "NOT MET")
        print(f"{r['bench']}\n    vs {r['baseline']}: {figures}\n    target {r['target']}: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
