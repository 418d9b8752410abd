"""One real migration over loopback TCP with settings given to one side alone, and what
really happened: completed (with the guest RAM of both sides compared), failed (which side,
its first error), hung (no verdict in time: both are killed) or refused (a side refused
its set-up). Every channel is recorded on the way (tcp_capture.TcpRecorder), so that the
model can judge the same bytes the destination read.

Unlike tcp_migration.capture_channels, a migration that fails or hangs is a verdict here,
never an exception: this is what the differential test of one-sided settings compares the
model with.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from conformance.qemu.binaries import QemuBinary
from conformance.qemu.capture import pmem_digest, vm_args
from conformance.qemu.destination import start_destination
from conformance.qemu.process import QemuError, QemuExited, QemuProcess, QmpCommandError, error_lines
from conformance.qemu.tcp_capture import TcpRecorder
from conformance.qemu.tcp_migration import MULTIFD_MAGIC, listen_incoming

GONE = "exited"
FAILED = ("failed", "cancelled", GONE)


@dataclass
class SidedOutcome:
    kind: str  # completed | failed | hung | refused | ram-differs
    side: str = ""  # "source" or "destination": where it failed or was refused
    message: str = ""
    main: bytes = b""  # the main stream as the destination received it
    return_path: bytes = b""
    multifd: dict[int, bytes] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def loaded(self) -> bool:
        return self.kind == "completed"


def _first(lines: list[str], default: str) -> str:
    errs = [ln for ln in lines if not ln.startswith("warning:")]
    return errs[0] if errs else default


def _status(q: QemuProcess) -> tuple[str | None, str]:
    """(status, error) of one side; status GONE when the process exited (a 7.2 destination
    exits when its load fails), "none" before anything started."""
    if not q.alive:
        return GONE, _first(q.error_lines, f"exited with code {q.returncode}")
    try:
        info = q.cmd("query-migrate", timeout=2.0)
    except QemuError:
        q.wait_exit(1.0)
        return GONE, _first(q.error_lines, "no QMP answer")
    return info.get("status", "none"), str(info.get("error-desc") or _first(q.error_lines, ""))


def migrate_sided(src: QemuBinary, dst: QemuBinary, *, machine: str, mem_mb: int = 32,
                  src_globals: tuple[str, ...] = (), dst_globals: tuple[str, ...] = (),
                  src_capabilities: Mapping[str, bool] | None = None, dst_capabilities: Mapping[str, bool] | None = None,
                  src_parameters: Mapping[str, Any] | None = None, dst_parameters: Mapping[str, Any] | None = None,
                  src_ram_file: Path | str | None = None, dst_ram_file: Path | str | None = None,
                  running: bool = False, timeout: float = 20.0) -> SidedOutcome:
    """Migrate a paused guest from `src` to `dst`, each with its own settings. The guest RAM
    of both sides is compared when the load completed (`src_ram_file`/`dst_ram_file`: a side's
    RAM is a private mapping of that file, the same RAM block name on both sides; a destination
    that starts with other contents than zeros shows pages it was never sent). `running`: the source guest runs
    (firmware with no boot disk) while it migrates, as a live migration does."""
    t0 = time.monotonic()
    try:
        d = start_destination(dst, machine=machine, mem_mb=mem_mb, ram_file=dst_ram_file, capabilities=_dict(dst_capabilities),
                              parameters=_dict(dst_parameters), globals_=dst_globals)
    except (QemuExited, QmpCommandError) as e:
        return SidedOutcome("refused", "destination", _refusal(e), seconds=time.monotonic() - t0)
    with d:
        port = listen_incoming(d)
        s = QemuProcess(src, vm_args(machine=machine, mem_mb=mem_mb, ram_file=src_ram_file, globals_=src_globals), name=f"src-{src.version}")
        with TcpRecorder(("127.0.0.1", port)) as rec:
            try:
                s.start()  # (a -global the source lacks ends it here: refused)
                s.set_capabilities(_dict(src_capabilities))
                s.set_parameters(_dict(src_parameters))
                if running:
                    s.cmd("cont")
                s.cmd("migrate", uri=rec.uri)
            except (QemuExited, QmpCommandError) as e:
                s.terminate()
                return SidedOutcome("refused", "source", _refusal(e), seconds=time.monotonic() - t0)
            with s:
                out = _wait(s, d, t0 + timeout)
                # both guests are stopped now (the source in postmigrate): their RAM must be equal
                if out.kind == "completed" and pmem_digest(s, mem_mb) != pmem_digest(d, mem_mb):
                    out = SidedOutcome("ram-differs", "destination", "completed, guest RAM differs from the source's")
                # the source still alive: a channel the destination did not wait for (a multifd
                # packet after the main stream ended) is recorded whole, not cut by the kill
                rec.wait_closed(3.0)
            conns = [bytes(c.forward) for c in rec.connections]
            if conns:
                out.main, out.return_path = conns[0], bytes(rec.connections[0].backward)
                out.multifd = {c[24]: c for c in conns[1:] if c[:4] == MULTIFD_MAGIC and len(c) >= 64}
    out.seconds = time.monotonic() - t0
    return out


def _dict(m: Mapping | None) -> dict:
    return dict(m or {})


def _refusal(e: QemuError) -> str:
    if isinstance(e, QmpCommandError):
        return e.desc
    return _first(error_lines(getattr(e, "stderr", "")), str(e))


def _wait(s: QemuProcess, d: QemuProcess, deadline: float) -> SidedOutcome:
    """Poll both sides until both completed, one failed, or the deadline (hung)."""
    delay = 0.01
    while True:
        ss, serr = _status(s)
        ds, derr = _status(d)
        if ds in FAILED:
            return SidedOutcome("failed", "destination", derr or f"status {ds}")
        if ss in FAILED:
            return SidedOutcome("failed", "source", serr or f"status {ss}")
        if ss == "completed" and ds == "completed":
            return SidedOutcome("completed")
        if time.monotonic() > deadline:
            return SidedOutcome("hung", "destination" if ss == "completed" else "source",
                                f"source {ss!r}, destination {ds!r} at the deadline")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
