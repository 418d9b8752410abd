"""The whole matrix: every cell of a grid on a pool of threads, one task per capture."""

from __future__ import annotations

import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from conformance.qemu import QemuBinary, reaper
from conformance.rules import compat
from conformance.tools.matrix.cell import CellResult, CheckerVerdict, Outcome, run_cell
from conformance.tools.matrix.grid import MATRIX_DEVICE_SETS, CellSpec, Grid, MatrixError, build_grid
from conformance.tools.matrix.store import CaptureStore
from conformance.versions import version_key

EXIT_AGREE, EXIT_DISAGREE, EXIT_USAGE = 0, 1, 2
SCHEMA = 1


@dataclass
class MatrixResult:
    grid: Grid
    cells: list[CellResult]
    versions: dict[str, str]  # "7.2" -> "7.2.22"
    settings: dict = field(default_factory=dict)
    seconds: float = 0.0

    def counts(self) -> dict[str, int]:
        out = {k: 0 for k in ("pass", "expected-fail", "disagree", "error")}
        for c in self.cells:
            out[c.verdict] += 1
        return out

    @property
    def exit_code(self) -> int:
        return EXIT_AGREE if all(c.verdict in ("pass", "expected-fail") for c in self.cells) else EXIT_DISAGREE

    def as_json(self) -> dict:
        return {"schema": SCHEMA, "tool": "migconform matrix", "versions": dict(self.versions),
                "grid": self.grid.as_json(), "settings": dict(self.settings),
                "summary": {"cells": len(self.cells), **self.counts(), "seconds": round(self.seconds, 2)},
                "cells": [c.as_json() for c in self.cells]}


def run_matrix(binaries: Mapping[str, QemuBinary], grid: Grid, *, workdir: Path | str | None = None,
               workers: int = 2, mem_mb: int = 64, timeout: float = 30.0, boot_timeout: float | None = None,
               globals_: Sequence[str] = (),
               progress: Callable[[CellResult, int, int], None] | None = None, explain: bool = True,
               user_sets: Mapping[str, Sequence[str]] | None = None, extra_devices: Sequence[str] = (),
               doing: Callable[[str], None] | None = None, tick: Callable[[], None] | None = None,
               tick_every: float = 5.0) -> MatrixResult:
    """Run every cell of `grid` with `workers` threads; one task per capture (its cells run
    one after the other, so each capture is made once before its loads). `doing(text)`: what a
    worker starts now (a capture, its guest's boot, a load); `tick()`: every `tick_every`
    seconds while cells run (a log shows the run is alive)."""
    missing = [v for v in grid.versions if v not in binaries]
    if missing:
        raise MatrixError(f"no QEMU binary for {', '.join(missing)}")
    t0 = time.monotonic()
    cells = grid.cells()
    groups: dict[tuple, list[CellSpec]] = {}
    for c in cells:
        groups.setdefault(c.capture_key, []).append(c)
    results: dict[CellSpec, CellResult] = {}
    done = 0
    lock = threading.Lock()
    with reaper.temporary_directory("migconform-matrix-") as tmp:  # removed on every way out
        store = CaptureStore(workdir or tmp, binaries, mem_mb=mem_mb, timeout=timeout, boot_timeout=boot_timeout,
                             globals_=globals_,
                             user_sets=user_sets, extra_devices=extra_devices, doing=doing)

        def run_group(specs: list[CellSpec]) -> list[CellResult]:
            nonlocal done
            out = []
            for s in specs:
                try:
                    r = run_cell(s, store, explain=explain)
                except Exception as e:  # a bug or an I/O error costs this cell its verdict, not the run
                    r = CellResult(s, Outcome("error", "destination", f"{type(e).__name__}: {e}"),
                                   compat.Prediction(True, []), CheckerVerdict(None, [], "not run"))
                out.append(r)
                with lock:
                    done += 1
                    n = done
                if progress is not None:
                    progress(r, n, len(cells))
            return out

        pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="matrix")
        try:
            pending = {pool.submit(run_group, g) for g in groups.values()}
            while pending:
                finished, pending = wait(pending, timeout=tick_every, return_when=FIRST_COMPLETED)
                for f in finished:
                    for r in f.result():
                        results[r.spec] = r
                if tick is not None:
                    tick()
        except BaseException:  # Ctrl-C: drop the queued groups, let the running ones end
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown()
    return MatrixResult(grid, [results[c] for c in cells],
                        {v: binaries[v].full_version for v in grid.versions},
                        {"mem_mb": mem_mb, "timeout": timeout, "boot_timeout": store.boot_timeout,
                         "workers": workers, "globals": list(globals_),
                         "device_sets": {k: list(v) for k, v in (user_sets or {}).items() if k in grid.devices},
                         "device_args": list(extra_devices),
                         "transport": "fd: into a file, loaded with exec:cat FILE; postcopy, nonconverging and "
                                      "multifd cells: tcp: on loopback straight into the destination"},
                        time.monotonic() - t0)


def merge_cells(cells: Sequence[Mapping], *, seconds: float = 0.0, settings: Mapping | None = None) -> dict:
    """One report (the `--json` form, for format_text and render_html) from cells run
    elsewhere: pytest items on xdist workers, possibly on other hosts (CellResult.as_json
    each). The grid is the one the cells span; cells it has that did not run show as '-'."""
    def values(key: str) -> list[str]:
        return list(dict.fromkeys(c[key] for c in cells))

    versions = sorted({v for c in cells for v in (c["src"], c["dst"])}, key=version_key)
    devices = values("devices")
    grid = build_grid(versions, values("machine"), devices, values("caps"), values("guest"), values("one_sided"),
                      {d: () for d in devices if d not in MATRIX_DEVICE_SETS},
                      [c.get("accel", "tcg") for c in cells], [c.get("mode", "live") for c in cells])
    full = {}
    for c in cells:
        full.setdefault(c["src"], c.get("src_version") or c["src"])
        full.setdefault(c["dst"], c.get("dst_version") or c["dst"])
    order = {spec.id + spec.row: i for i, spec in enumerate(grid.cells())}
    ordered = sorted(cells, key=lambda c: order.get(c["id"] + c["row"], len(order)))
    counts = {k: 0 for k in ("pass", "expected-fail", "disagree", "error")}
    for c in cells:
        counts[c["verdict"]] += 1
    return {"schema": SCHEMA, "tool": "migconform matrix (pytest items)", "versions": {v: full[v] for v in versions},
            "grid": grid.as_json(), "settings": dict(settings or {}),
            "summary": {"cells": len(cells), **counts, "seconds": round(seconds, 2)}, "cells": ordered}
