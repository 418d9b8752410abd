"""A running guest migrated straight into a live destination over loopback TCP, through the
recording proxy (every channel kept for the checker): precopy, precopy kept from converging
(bounded: the source is stopped after a deadline), postcopy (the source switches with
`migrate-start-postcopy` while its guest runs), each with or without multifd.

Every wait is bounded; what happened is returned as facts (`RunningMigration`), never raised:
a side that refuses its set-up, a migration that fails, a destination that exits (a QEMU
abort), a source left in `postcopy-paused` by a dead destination, and no verdict in time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from conformance.qemu.binaries import QemuBinary
from conformance.qemu.capture import guest_ram_digest, vm_args
from conformance.qemu.destination import start_destination
from conformance.qemu.process import MigrationFailed, QemuError, QemuExited, QemuProcess, QemuTimeout, \
    QmpCommandError, error_lines
from conformance.qemu.tcp_capture import RecorderError, TcpRecorder
from conformance.qemu.tcp_migration import MULTIFD_MAGIC, listen_incoming

PRECOPY, NONCONVERGING, POSTCOPY = "precopy", "nonconverging", "postcopy"
KINDS = (PRECOPY, NONCONVERGING, POSTCOPY)

# What keeps a dirtying guest from converging: QEMU completes precopy only when the pages
# still dirty can be sent within downtime-limit at the measured bandwidth. 1 ms at 1 MiB/s
# is about 1 KiB, less than one page; the dirtier guest re-dirties 112 pages per sweep
# (measured on 10.0 under TCG: 60-80 pages left at every dirty sync, never done). A faster
# limit is no limit for these guests: their first pass is 1-2 MB (zero pages are flagged,
# not sent), done inside the first 100 ms rate window, and 16 MiB/s converged in 2 rounds.
NONCONVERGING_PARAMETERS = {"downtime-limit": 1, "max-bandwidth": 1 << 20}
# Postcopy: the same precopy that cannot end by itself, so that the switch comes before it
# completes; once in postcopy the source sends at max-postcopy-bandwidth (0: unlimited). A
# 7.2 source under TCG still completed in precopy now and then (1 run in 5 here; 2 in 3 with
# the default downtime-limit): its lost dirty tracking can leave nothing to send. Such a
# migration says so ("completed in precopy, before the switch to postcopy"). So can a 10.0
# source on a loaded machine: QEMU completes when nothing at all is pending, before it looks
# at the switch request, and a starved vCPU may dirty nothing between two syncs.
POSTCOPY_PARAMETERS = {"downtime-limit": 1, "max-bandwidth": 1 << 20}
# Source states in which a migration is over or can no longer end by itself.
_SOURCE_FAIL = ("failed", "cancelled", "postcopy-paused")


@dataclass
class RunningMigration:
    """kind: completed | refused (a side refused the set-up) | failed | hung | converged (a
    migration that was to be kept from converging completed by itself). side: where it
    happened. converged: precopy ended by itself before the deadline (None: not known).
    postcopy: the source passed `postcopy-active`. stopped: the source was stopped to end it."""

    kind: str
    side: str = "destination"
    message: str = ""
    error_lines: list[str] = field(default_factory=list)
    seconds: float = 0.0
    converged: bool | None = None
    postcopy: bool = False
    stopped: bool = False
    dirty_sync_count: int | None = None
    statuses: list[str] = field(default_factory=list)  # the source's, in order seen
    source_ram: str | None = None  # guest_ram_digest once both are stopped (completed only)
    destination_ram: str | None = None
    guest_alive: bool | None = None  # the destination resumed and its heartbeat moved (None: not checked)
    main: bytes = b""
    multifd: dict[int, bytes] = field(default_factory=dict)
    other: list[bytes] = field(default_factory=list)  # postcopy preempt, unknown connections
    return_path: bytes = b""


def _watch(s: QemuProcess, statuses: list[str], until: Iterable[str], timeout: float) -> dict:
    """Poll the source's query-migrate until a status in `until` (returned); a status in
    _SOURCE_FAIL raises MigrationFailed; past `timeout` QemuTimeout. Every status seen is
    appended to `statuses` (once per change)."""
    want = set(until)
    deadline = time.monotonic() + timeout
    while True:
        info = s.cmd("query-migrate", timeout=max(1.0, min(10.0, deadline - time.monotonic())))
        st = info.get("status")
        if st and (not statuses or statuses[-1] != st):
            statuses.append(st)
        if st in want:
            return info
        if st in _SOURCE_FAIL:
            raise MigrationFailed(st, info)
        if time.monotonic() > deadline:
            raise QemuTimeout(f"migration still {st!r} after {timeout:.1f} s")
        time.sleep(0.05)


def migrate_running(src: QemuBinary, dst: QemuBinary, *, machine: str, kind: str = PRECOPY,
                    devices: str = "none", mem_mb: int = 64, capabilities: Mapping[str, bool] | None = None,
                    parameters: Mapping[str, Any] | None = None, globals_: Iterable[str] = (),
                    extra_args: Iterable[str] = (), src_globals: Iterable[str] = (), dst_globals: Iterable[str] = (),
                    src_capabilities: Mapping[str, bool] | None = None,
                    dst_capabilities: Mapping[str, bool] | None = None,
                    src_parameters: Mapping[str, Any] | None = None, dst_parameters: Mapping[str, Any] | None = None,
                    running: bool = True, started: Callable[[QemuProcess], None] | None = None,
                    converge_within: float = 4.0, postcopy_after: float = 0.0, timeout: float = 60.0,
                    alive: Callable[[QemuProcess], bool] | None = None,
                    record_limit: int = 256 << 20) -> RunningMigration:
    """Migrate a (running) source into a destination over loopback TCP, as `kind` says:

    * precopy: wait for `completed`;
    * nonconverging: NONCONVERGING_PARAMETERS (under the caller's); if the source has not
      completed `converge_within` seconds after `migrate`, it is stopped and then completes
      (converged False); completing before that is kind "converged";
    * postcopy: postcopy-ram on both sides, POSTCOPY_PARAMETERS, `migrate-start-postcopy`
      `postcopy_after` seconds after `migrate` (default at once) while the guest runs; a
      migration that completed in precopy all the same says so.

    Both started with -S (the destination does not run its guest before it is checked);
    `started(q)` runs on the source after `cont` (e.g. wait for the guest's heartbeat).
    Once both completed: guest RAM of both (guest_ram_digest), then the destination is
    resumed and `alive(q)` asked whether its guest runs."""
    if kind not in KINDS:
        raise ValueError(f"unknown running-migration kind {kind!r} (known: {', '.join(KINDS)})")
    caps = dict(capabilities or {})
    params = dict(parameters or {})
    if kind == POSTCOPY:
        caps["postcopy-ram"] = True
        params = {**POSTCOPY_PARAMETERS, **params}
    elif kind == NONCONVERGING:
        params = {**NONCONVERGING_PARAMETERS, **params}
    extra_args = list(extra_args)
    globals_ = tuple(globals_)
    t0 = time.monotonic()
    res = RunningMigration("hung")

    def end(kind_: str, side: str, message: str, lines: Iterable[str] = ()) -> RunningMigration:
        res.kind, res.side, res.message = kind_, side, message
        res.error_lines = list(lines)
        res.postcopy = "postcopy-active" in res.statuses
        res.seconds = time.monotonic() - t0
        return res

    try:
        d = start_destination(dst, machine=machine, devices=devices, mem_mb=mem_mb,
                              capabilities={**caps, **(dst_capabilities or {})},
                              parameters={**params, **(dst_parameters or {})},
                              globals_=(*globals_, *dst_globals), extra_args=extra_args)
    except QemuExited as e:
        return end("refused", "destination", _first(error_lines(e.stderr), str(e)), error_lines(e.stderr))
    except QmpCommandError as e:
        return end("refused", "destination", e.desc, [str(e)])
    with d:
        try:
            port = listen_incoming(d)
        except QemuError as e:
            return end("refused", "destination", str(e), d.error_lines)
        with TcpRecorder(("127.0.0.1", port), limit=record_limit) as rec:
            try:
                s = QemuProcess(src, vm_args(machine=machine, devices=devices, mem_mb=mem_mb,
                                             globals_=(*globals_, *src_globals), extra_args=extra_args),
                                name=f"src-{src.version}")
                s.start()
            except QemuExited as e:
                s.terminate()
                return end("refused", "source", _first(error_lines(e.stderr), str(e)), error_lines(e.stderr))
            with s:
                try:
                    s.set_capabilities({**caps, **(src_capabilities or {})})
                    s.set_parameters({**params, **(src_parameters or {})})
                except QmpCommandError as e:
                    return end("refused", "source", e.desc, [str(e)])
                if running:
                    s.cmd("cont")
                    if started is not None:
                        started(s)
                t_mig = time.monotonic()
                try:
                    s.cmd("migrate", uri=rec.uri)
                    out = _drive(s, d, res, kind, t_mig, converge_within, postcopy_after, timeout)
                except QmpCommandError as e:
                    return end("refused", "source", e.desc, [str(e)])
                except (QemuError, MigrationFailed) as e:
                    out = _failure(e, s, d)
                if out is not None:
                    _collect(res, rec)  # as far as it went: for the checker
                    return end(*out)
                # both completed, both stopped (the destination started -S)
                res.source_ram = guest_ram_digest(s, mem_mb)
            try:
                res.destination_ram = guest_ram_digest(d, mem_mb)
            except QemuError as e:
                return end("failed", "destination", f"completed, then no RAM read: {e}", d.error_lines)
            rec.wait_closed(5.0)
            try:
                rec.require_whole()
            except RecorderError as e:
                return end("error", "destination", str(e))
            _collect(res, rec)
        if alive is not None:
            try:
                d.cmd("cont")
                res.guest_alive = alive(d)
            except QemuError:
                res.guest_alive = False
        return end(res.kind if res.kind == "converged" else "completed", "destination",
                   _summary(res, kind, converge_within), d.error_lines)


def _drive(s: QemuProcess, d: QemuProcess, res: RunningMigration, kind: str, t_mig: float,
           converge_within: float, postcopy_after: float, timeout: float) -> tuple | None:
    """Take the source's migration to its end as `kind` says; None once both sides completed,
    else (kind, side, message, lines) for `end`."""
    left = lambda: max(1.0, timeout - (time.monotonic() - t_mig))  # noqa: E731
    if kind == NONCONVERGING:
        try:
            info = _watch(s, res.statuses, ("completed",), converge_within)
            res.converged = True
            res.dirty_sync_count = info.get("ram", {}).get("dirty-sync-count")
            res.kind = "converged"
        except QemuTimeout:
            res.converged = False
            info = s.cmd("query-migrate")
            res.dirty_sync_count = info.get("ram", {}).get("dirty-sync-count")
            s.cmd("stop")
            res.stopped = True
            _watch(s, res.statuses, ("completed",), left())
    elif kind == POSTCOPY:
        # QEMU takes the request from `setup` on and switches at its next iteration. Asked at
        # once: on 7.2 under TCG, 0.1 s later was sometimes too late (the first pass had ended
        # below the switch threshold, precopy completed).
        if postcopy_after:
            time.sleep(postcopy_after)
        try:  # asked without a query first: one QMP round trip less before the switch
            s.cmd("migrate-start-postcopy")
        except QmpCommandError:
            pass  # the migration already ended (or failed): what it did is watched below
        _watch(s, res.statuses, ("completed",), left())
        res.postcopy = "postcopy-active" in res.statuses
    else:
        _watch(s, res.statuses, ("completed",), left())
        res.converged = True
    try:
        d.wait_migration(("completed",), timeout=left())
    except QemuTimeout as e:
        return ("hung", "destination", f"the source completed, the destination did not: {e}", d.error_lines)
    return None


def _failure(e: BaseException, s: QemuProcess, d: QemuProcess) -> tuple:
    """(kind, side, message, lines) for a migration that did not complete: the destination's
    exit or error first (a source fails or pauses because its destination went away)."""
    if not d.alive() or d.wait_exit(1.0) is not None:
        lines = d.error_lines
        return ("failed", "destination", _first(lines, f"exited with code {d.returncode}"), lines)
    try:
        dinfo = d.cmd("query-migrate", timeout=2.0)
    except QemuError:
        dinfo = {}
    if dinfo.get("status") == "failed":
        lines = d.error_lines
        return ("failed", "destination", _first(lines, dinfo.get("error-desc", "failed")), lines)
    if isinstance(e, MigrationFailed):
        msg = e.info.get("error-desc") or f"source status {e.status!r}"
        return ("failed", "source", msg, [str(e), *s.error_lines])
    if isinstance(e, QemuExited):
        return ("failed", "source", _first(error_lines(e.stderr), str(e)), error_lines(e.stderr))
    if isinstance(e, QemuTimeout):
        return ("hung", "source", str(e), [str(e)])
    return ("failed", "source", str(e), [str(e)])


def _collect(res: RunningMigration, rec: TcpRecorder) -> None:
    """The recorded connections into `res`: the first is the main stream (its backward
    direction the return path), then multifd channels (told by their magic) and others."""
    conns = rec.connections
    if conns:
        res.main, res.return_path = bytes(conns[0].forward), bytes(conns[0].backward)
        res.multifd, res.other = {}, []
        for c in conns[1:]:
            data = bytes(c.forward)
            if data[:4] == MULTIFD_MAGIC and len(data) >= 64:
                res.multifd[data[24]] = data
            else:
                res.other.append(data)


def _first(lines: list[str], default: str) -> str:
    errs = [ln for ln in lines if not ln.startswith("warning:")]
    return errs[0] if errs else default


def _summary(res: RunningMigration, kind: str, converge_within: float) -> str:
    if kind == NONCONVERGING:
        rounds = f"{res.dirty_sync_count} dirty-sync rounds" if res.dirty_sync_count is not None else "rounds unknown"
        if res.converged:
            return (f"converged by itself ({rounds}) although the guest was to dirty faster than "
                    "max-bandwidth allows within downtime-limit")
        return f"did not converge within {converge_within:g} s ({rounds}); completed once the source was stopped"
    if kind == POSTCOPY:
        return "completed in postcopy" if res.postcopy else "completed in precopy, before the switch to postcopy"
    return "completed"
