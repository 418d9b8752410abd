"""A direct cell: the source migrates straight into the cell's live destination over loopback
TCP (conformance.qemu.running_migration) — the postcopy and nonconverging modes, and every
cell with multifd — instead of through a file loaded afterwards. Each cell is its own
migration; its channels are recorded for the checker (main stream + multifd channel files
in a directory of the store), and the outcome is judged as after_load judges a loaded one:
guest RAM of both sides once stopped, then the destination resumed and its heartbeat read."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from conformance.qemu import QemuError
from conformance.qemu import guests as guest_programs
from conformance.qemu.running_migration import NONCONVERGING, POSTCOPY, PRECOPY, migrate_running
from conformance.tools.matrix.cell import _UNSUPPORTED_MACHINE, CheckerVerdict, Outcome, check_capture, \
    outcome_of_exception
from conformance.tools.matrix.grid import NONCONVERGING_SECONDS, CellSpec, safe_name

if TYPE_CHECKING:
    from conformance.tools.matrix.store import Capture, CaptureStore


def run_direct(spec: CellSpec, store: "CaptureStore", *, timeout: float | None = None
               ) -> tuple["Capture", Outcome, CheckerVerdict]:
    """(the recorded channels as a Capture, the real outcome, the checker's verdict)."""
    from conformance.tools.matrix.store import Capture

    timeout = store.timeout if timeout is None else timeout
    b = store.binaries
    g = store.guest(spec.guest)
    caps = spec.capabilities
    sides = spec.sides
    dev, extra = store.device_args(spec.devices, caps, g, spec.accel)
    mem = g.mem_mb(store.mem_mb)
    kind = {"postcopy": POSTCOPY, "nonconverging": NONCONVERGING}.get(spec.mode, PRECOPY)
    started = None
    if g.runs:
        def started(q) -> None:
            guest_programs.wait_started(q, g, store.boot_timeout)
            if spec.mode == "stopped":
                q.cmd("stop")
    alive = (lambda q: guest_programs.heartbeat_advances(q, g, within=timeout)) if g.checked else None
    t0 = time.monotonic()
    try:
        r = migrate_running(b[spec.src], b[spec.dst], machine=spec.machine, kind=kind, devices=dev, mem_mb=mem,
                            capabilities={c: True for c in caps}, globals_=store.globals_, extra_args=extra,
                            src_globals=sides.source_globals, dst_globals=sides.dest_globals,
                            src_capabilities=sides.source_capabilities, dst_capabilities=sides.dest_capabilities,
                            src_parameters=sides.source_parameters, dst_parameters=sides.dest_parameters,
                            running=g.runs, started=started, converge_within=NONCONVERGING_SECONDS,
                            timeout=timeout + (store.boot_timeout if g.runs else 0.0), alive=alive)
    except (QemuError, TimeoutError) as e:
        out = outcome_of_exception(e, "source", time.monotonic() - t0)
        cap = Capture(spec.capture_key, None, out, 0, out.seconds, b[spec.src].full_version)
        return cap, out, CheckerVerdict(None, [], f"no stream: the source {out.said}")
    real = _outcome(r)
    folder = store.root / ("direct_" + safe_name(spec.direct_name))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "main.bin").write_bytes(r.main)
    for i, data in r.multifd.items():
        (folder / f"multifd{i}.bin").write_bytes(data)
    size = len(r.main) + sum(len(x) for x in r.multifd.values())
    # the main stream is what explain decodes; the checker reads the folder (with the channels)
    cap = Capture(spec.capture_key, folder / "main.bin", None, size, r.seconds, b[spec.src].full_version,
                  r.source_ram)
    if real.kind in ("refused", "unsupported-machine"):
        checker = CheckerVerdict(None, [], f"not applicable: the {real.side} refused its set-up ({real.message}); "
                                           "the checker judges streams only")
    elif not r.main:
        checker = CheckerVerdict(None, [], "no stream: the source sent nothing")
    else:
        checker = check_capture(folder, spec.dst, spec.machine, sides, spec.guest, spec.src,
                                capabilities=spec.migration_capabilities)
        if real.ok is False and r.postcopy and checker.ok:
            checker.note += " (the stream as far as it was recorded)"
    return cap, real, checker


def _outcome(r) -> Outcome:
    """A matrix Outcome from a RunningMigration."""
    if r.kind == "refused":
        k = "unsupported-machine" if _UNSUPPORTED_MACHINE.search("\n".join([r.message, *r.error_lines])) else "refused"
        return Outcome(k, r.side, r.message, r.error_lines, r.seconds)
    if r.kind in ("failed", "hung", "error"):
        return Outcome(r.kind, r.side, r.message, r.error_lines, r.seconds)
    # completed, or converged (kept from converging, it did): RAM first, then the guest
    if r.source_ram is not None and r.source_ram != r.destination_ram:
        return Outcome("ram-differs", "destination", "the destination's guest RAM differs from the source's "
                       f"(silent loss); {r.message}", r.error_lines, r.seconds)
    if r.guest_alive is False:
        return Outcome("guest-dead", "destination", f"the resumed guest's heartbeat does not move; {r.message}",
                       r.error_lines, r.seconds)
    return Outcome(r.kind, "destination", r.message, r.error_lines, r.seconds)
