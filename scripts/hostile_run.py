#!/usr/bin/env python3
"""The long form of the hostile-input suite (tests/test_hostile.py is the quick one): N hostile
inputs across check, dump, --channel, --vmstate, --reference, --recovery, capture-directory
manifests, vmstate-diff and stdin, each in a child forked from a warm interpreter under
RLIMIT_AS (Budgets.process_memory) and a time budget (Budgets.input_seconds), all from
wireformat/budgets.py. Prints the counts of internal errors, tracebacks, multi-line errors,
over-memory and over-time runs per target, and saves every failing case's seed to replay:

    python scripts/hostile_run.py -n 100000 [--seed S] [--jobs 2] [--failures DIR]
    python scripts/hostile_run.py --replay TARGET:SEED     # one case, its stderr printed

Exit 0 when every run kept the contract, 1 otherwise."""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections import Counter, defaultdict
from multiprocessing import Pool
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from strategies.hostile import TARGETS, make_case, seeds  # noqa: E402
from tests.hostile_runner import run_forked  # noqa: E402
from wireformat.budgets import BUDGETS  # noqa: E402


def _warm() -> None:
    """Import and build once what every child would otherwise redo (forks share it)."""
    import conformance.cli.check  # noqa: F401
    import conformance.cli.dump  # noqa: F401
    import conformance.tools.vmstate_diff  # noqa: F401
    import conformance.check.paths  # noqa: F401
    import conformance.check.dump  # noqa: F401
    import conformance.rules.device_state  # noqa: F401
    import conformance.rules.channels  # noqa: F401
    import conformance.rules.ram_model  # noqa: F401
    import wireformat.multifd  # noqa: F401
    from conformance.rules.tables import builtin_tables
    from conformance.versions import VERSIONS

    for v in VERSIONS:
        builtin_tables(v)
    seeds()


def one(job: tuple[str, int, float]) -> tuple[str, int, list[str], float, int, int | None, str]:
    target, seed, timeout = job
    try:
        case = make_case(random.Random(seed), target)
    except Exception as e:  # the generator's own fault: counted apart, never the product's
        return target, seed, ["harness"], 0.0, 0, None, f"{type(e).__name__}: {e}"
    o = run_forked(case, timeout=timeout)
    return target, seed, o.problems(), o.seconds, o.maxrss, o.exit, o.stderr.strip().splitlines()[0][:300] if o.stderr.strip() else ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=BUDGETS.input_seconds)
    ap.add_argument("--failures", type=Path, default=None, help="write failing TARGET:SEED lines here")
    ap.add_argument("--target", action="append", choices=TARGETS, help="only these targets (repeatable)")
    ap.add_argument("--minutes", type=float, default=None, help="stop after this long (the counts say how many ran)")
    ap.add_argument("--replay", metavar="TARGET:SEED")
    a = ap.parse_args()
    _warm()
    if a.replay:
        target, seed = a.replay.split(":")
        case = make_case(random.Random(int(seed)), target)
        o = run_forked(case, timeout=a.timeout)
        print(repr(case))
        print(f"exit {o.exit} in {o.seconds:.2f}s, maxrss {o.maxrss >> 20} MiB, problems {o.problems()}")
        print(o.stderr)
        return 0 if not o.problems() else 1
    base = a.seed if a.seed is not None else random.randrange(2**32)
    targets = a.target or list(TARGETS)
    rnd = random.Random(base)
    jobs = [(targets[i % len(targets)], rnd.randrange(2**63), a.timeout) for i in range(a.n)]
    counts: dict[str, Counter] = defaultdict(Counter)
    exits: Counter = Counter()
    seconds: Counter = Counter()
    slowest, biggest = (0.0, ""), (0, "")
    failures = []
    t0 = last = time.monotonic()
    print(f"hostile run: {a.n} inputs, seed {base}, memory budget {BUDGETS.process_memory >> 20} MiB (RLIMIT_AS), "
          f"time budget {a.timeout:g} s each", file=sys.stderr)
    with Pool(a.jobs) as pool:
        for i, (target, seed, problems, secs, rss, code, first) in enumerate(pool.imap_unordered(one, jobs, chunksize=4), 1):
            counts[target]["runs"] += 1
            seconds[target] += secs
            exits[code] += 1
            for p in problems:
                counts[target][p] += 1
            if problems:
                failures.append({"case": f"{target}:{seed}", "problems": problems, "stderr": first})
                if a.failures:  # as they come: a run stopped early keeps them
                    with a.failures.open("a") as f:
                        f.write(json.dumps(failures[-1]) + "\n")
            if secs > slowest[0]:
                slowest = (secs, f"{target}:{seed}")
            if rss > biggest[0]:
                biggest = (rss, f"{target}:{seed}")
            if a.minutes is not None and time.monotonic() - t0 > 60 * a.minutes:
                pool.terminate()
                break
            if time.monotonic() - last > 30:
                last = time.monotonic()
                print(f"  {i}/{a.n} in {last - t0:.0f}s, {len(failures)} failing", file=sys.stderr, flush=True)
    total = Counter()
    for c in counts.values():
        total.update(c)
    kinds = ("internal-error", "traceback", "multi-line-error", "over-memory", "over-time", "signal", "exit", "harness")
    print(f"{'target':<14}{'runs':>8}{'mean s':>8}" + "".join(f"{k:>18}" for k in kinds))
    for t in sorted(counts):
        print(f"{t:<14}{counts[t]['runs']:>8}{seconds[t] / counts[t]['runs']:>8.2f}" + "".join(f"{sum(v for k2, v in counts[t].items() if k2.startswith(k)):>18}" for k in kinds))
    print(f"{'total':<14}{total['runs']:>8}{sum(seconds.values()) / max(total['runs'], 1):>8.2f}" + "".join(f"{sum(v for k2, v in total.items() if k2.startswith(k)):>18}" for k in kinds))
    print(f"exit codes: {dict(sorted(exits.items(), key=str))}; slowest {slowest[0]:.2f}s ({slowest[1]}); "
          f"largest peak RSS {biggest[0] >> 20} MiB ({biggest[1]}); {time.monotonic() - t0:.0f}s wall")
    for f in failures[:40]:
        print(f"FAIL {f['case']}: {','.join(f['problems'])}: {f['stderr']}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
