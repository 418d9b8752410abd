"""Migrations over loopback TCP: capture every channel of a real migration (main stream,
return path, multifd channels) through a recording proxy, and replay a capture into a real
destination, one connection per channel, in a chosen delivery schedule.

A destination that does not finish is a verdict (bounded wait, then it is killed), never a
hang of ours: real destinations hang on bad multifd data.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from conformance.qemu import reaper
from conformance.qemu.binaries import QemuBinary
from conformance.qemu.capture import LOW_MEMORY, pmem_digest, ram_digest, ram_digest_file, vm_args  # noqa: F401 (re-exported)
from conformance.qemu.destination import start_destination
from conformance.qemu.process import QemuError, QemuExited, QemuProcess, QemuTimeout, QmpCommandError, error_lines
from conformance.qemu.tcp_capture import RecorderError, TcpRecorder

MULTIFD_MAGIC = b"\x11\x22\x33\x44"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LISTEN_ATTEMPTS = 5


def listen_incoming(q: QemuProcess, command: str = "migrate-incoming", *, oob: bool = False,
                    timeout: float | None = None) -> int:
    """Have destination `q` listen on a free loopback port (`migrate-incoming` or
    `migrate-recover`) and return the port. A port found free can be taken by another process
    before QEMU binds it (parallel test workers do), and QEMU then answers "Failed to find an
    available port: Address already in use": another port is tried, a few times."""
    for attempt in range(LISTEN_ATTEMPTS):
        port = free_port()
        try:
            (q.execute_oob if oob else q.cmd)(command, uri=f"tcp:127.0.0.1:{port}", timeout=timeout)
            return port
        except QmpCommandError as e:
            if "Address already in use" not in str(e) or attempt == LISTEN_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


@dataclass
class ChannelCapture:
    main: bytes
    return_path: bytes
    multifd: dict[int, bytes]  # channel id (from its init packet) -> bytes
    other: list[bytes]  # connections that are neither (postcopy preempt)
    source_status: dict
    destination_status: str | None
    seconds: float
    # digests (ram_digest) of guest RAM at the end, on both sides, when the guest ran
    source_ram: str | None = None
    destination_ram: str | None = None


def capture_channels(src: QemuBinary, dst: QemuBinary, *, machine: str, devices: str = "none", mem_mb: int = 64,
                     ram_file: Path | str | None = None, dst_ram_file: Path | str | None = None,
                     capabilities: Mapping[str, bool] | None = None, parameters: Mapping[str, Any] | None = None,
                     globals_: Iterable[str] = (), extra_args: Iterable[str] = (), running: bool = False,
                     stop_after: float | None = None, timeout: float = 60.0,
                     src_globals: Iterable[str] = (), dst_globals: Iterable[str] = (),
                     src_capabilities: Mapping[str, bool] | None = None,
                     dst_capabilities: Mapping[str, bool] | None = None,
                     src_parameters: Mapping[str, Any] | None = None, dst_parameters: Mapping[str, Any] | None = None,
                     started: Any = None, record_limit: int = 256 << 20) -> ChannelCapture:
    """A real source migrating to a real destination through a recording proxy. With
    `running` the source guest runs (e.g. the dirtying boot sector of devices.dirtier_args)
    and the final guest RAM of both sides is compared by digest; `stop_after` seconds into
    the migration the source guest is stopped, so that a migration kept from converging
    (a tiny downtime-limit) iterates over several dirty-sync rounds and then ends.
    src_*/dst_*: settings of one side alone, beside the shared ones; `started(q)`: called on
    the running source after `cont` instead of a fixed wait. record_limit: bytes kept per
    connection (the recorder holds them in memory; a longer channel is cut there)."""
    caps = dict(capabilities or {})
    params = dict(parameters or {})
    t0 = time.monotonic()
    extra_args = list(extra_args)
    digests = [None, None]
    globals_ = tuple(globals_)
    with start_destination(dst, machine=machine, devices=devices, mem_mb=mem_mb, ram_file=dst_ram_file,
                           capabilities={**caps, **(dst_capabilities or {})},
                           parameters={**params, **(dst_parameters or {})},
                           globals_=(*globals_, *dst_globals), extra_args=extra_args) as d:
        port = listen_incoming(d)
        with TcpRecorder(("127.0.0.1", port), limit=record_limit) as rec, \
                QemuProcess(src, vm_args(machine=machine, devices=devices, mem_mb=mem_mb, ram_file=ram_file,
                                         globals_=(*globals_, *src_globals), extra_args=extra_args),
                            name=f"src-{src.version}") as s:
            s.set_capabilities({**caps, **(src_capabilities or {})})
            s.set_parameters({**params, **(src_parameters or {})})
            if running:
                s.cmd("cont")
                if started is not None:
                    started(s)
                else:
                    time.sleep(0.2)  # let the guest start writing before the first pass
            s.cmd("migrate", uri=rec.uri)
            if running and stop_after is not None:
                time.sleep(stop_after)
                s.cmd("stop")
            status = s.wait_migration(("completed",), timeout=timeout)
            dst_status = d.wait_migration(("completed",), timeout=max(1.0, timeout - (time.monotonic() - t0)))
            rec.wait_closed(5.0)
            if running:  # both guests are stopped now: their RAM must be equal
                digests = [pmem_digest(q, mem_mb) for q in (s, d)]
        try:
            rec.require_whole()
        except RecorderError as e:
            raise QemuError(str(e)) from None
        conns = [bytes(c.forward) for c in rec.connections]
        if not conns:
            raise QemuError("the source opened no connection")
        multifd, other = {}, []
        for data in conns[1:]:
            if data[:4] == MULTIFD_MAGIC and len(data) >= 64:
                multifd[data[24]] = data
            else:
                other.append(data)
        return ChannelCapture(conns[0], bytes(rec.connections[0].backward), multifd, other, status,
                              dst_status.get("status"), time.monotonic() - t0, *digests)


@dataclass
class Schedule:
    """How a replay delivers each channel: bytes per send and a pause after each send
    (seconds), per channel name ("main", "multifd0", …). Channels not named go at once."""

    chunk: dict[str, int] = field(default_factory=dict)
    pause: dict[str, float] = field(default_factory=dict)
    start_delay: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        parts = [f"{k}: {self.chunk.get(k, 'all')}B/{self.pause.get(k, 0):.3f}s after {self.start_delay.get(k, 0):.3f}s"
                 for k in sorted(set(self.chunk) | set(self.pause) | set(self.start_delay))]
        return "; ".join(parts) or "everything at once"


@dataclass
class ReplayVerdict:
    completed: bool
    hung: bool  # no verdict within the timeout, or QMP stopped answering (the loader blocks it)
    status: str | None  # last query-migrate status seen
    error_lines: list[str]
    ram_sha256: str | None  # ram_digest() of the destination's guest RAM (pmemsave) when it completed
    seconds: float
    exit_code: int | None = None  # the destination exited by itself with this code
    started: bool = True  # False: the destination did not even start (error_lines say why)

    @property
    def failed(self) -> bool:
        return not self.completed and not self.hung

    @property
    def reason(self) -> str | None:
        """The destination's error: its first stderr line that is not a warning (QEMU prints
        warnings such as "hub 0 is not connected" before the cause)."""
        lines = [ln for ln in self.error_lines if not ln.startswith("warning:")]
        return lines[0] if lines else (f"status {self.status}" if self.status
                                       else f"exit code {self.exit_code}" if self.exit_code is not None else None)


SEND_CHUNK = 1 << 20  # bytes per send when the schedule does not say


def _sender(sock: socket.socket, data: bytes | Path | str, chunk: int, pause: float, delay: float,
            stop: threading.Event) -> None:
    try:
        if delay:
            stop.wait(delay)
        step = chunk or SEND_CHUNK
        if isinstance(data, (bytes, bytearray, memoryview)):
            view = memoryview(data)
            blocks = (view[i:i + step] for i in range(0, len(view), step))
        else:
            blocks = _file_blocks(Path(data), step, stop)
        for block in blocks:
            if stop.is_set():
                break
            sock.sendall(block)
            if pause:
                stop.wait(pause)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the destination went away (or the file did): its verdict says why


def _file_blocks(path: Path, step: int, stop: threading.Event):
    with open(path, "rb") as f:
        while not stop.is_set() and (block := f.read(step)):
            yield block


def replay(dst: QemuBinary, main: bytes | Path | str, channels: Mapping[int, bytes | Path | str], *, machine: str,
           devices: str = "none", mem_mb: int = 64, ram_file: Path | str | None = None,
           capabilities: Mapping[str, bool] | None = None, parameters: Mapping[str, Any] | None = None,
           globals_: Iterable[str] = (), schedule: Schedule | None = None, timeout: float = 30.0,
           ram_dump: Path | None = None, extra_args: Iterable[str] = ()) -> ReplayVerdict:
    """Play a capture into a real destination: the main stream first (a 7.2 destination
    tells channels apart by the order of connections), then the multifd channels in id
    order, each sent by its own thread as the schedule says. A stream given as a path is
    read as it is sent (memory stays bounded whatever its size).

    Verdicts: completed; failed (the destination said "failed" or exited: `reason` is its
    error); hung (nothing within `timeout`, or QMP stopped answering); not started
    (`started` False: the destination refused its command line)."""
    t0 = time.monotonic()
    try:
        d = start_destination(dst, machine=machine, devices=devices, mem_mb=mem_mb, ram_file=ram_file,
                              capabilities=capabilities, parameters=parameters, globals_=globals_,
                              extra_args=extra_args)
    except QemuExited as e:
        return ReplayVerdict(False, False, None, error_lines(e.stderr), None, time.monotonic() - t0,
                             exit_code=e.returncode, started=False)
    with d:
        return replay_into(d, main, channels, mem_mb=mem_mb, schedule=schedule, timeout=timeout,
                           ram_dump=ram_dump, t0=t0)


def replay_into(d: QemuProcess, main: bytes | Path | str, channels: Mapping[int, bytes | Path | str], *,
                mem_mb: int = 64, schedule: Schedule | None = None, timeout: float = 30.0,
                ram_dump: Path | None = None, digest: bool = True, t0: float | None = None) -> ReplayVerdict:
    """`replay` into a destination already started `-incoming defer` with its capabilities
    and parameters set (e.g. one of a warm pool). The caller owns `d` (and kills it: a hung
    one is left running). digest: pmemsave and hash the RAM of a completed load."""
    schedule = schedule or Schedule()
    t0 = time.monotonic() if t0 is None else t0
    stop = threading.Event()
    threads, socks = [], []
    try:
        port = listen_incoming(d)
        order: Sequence[tuple[str, bytes | Path | str]] = \
            [("main", main)] + [(f"multifd{i}", channels[i]) for i in sorted(channels)]
        for name, data in order:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5.0)
            except OSError:
                break  # the destination stopped listening (it failed): its verdict says why
            socks.append(sock)
            t = threading.Thread(target=_sender, args=(sock, data, schedule.chunk.get(name, 0),
                                                       schedule.pause.get(name, 0.0), schedule.start_delay.get(name, 0.0),
                                                       stop), daemon=True)
            t.start()
            threads.append(t)
            if name == "main":
                time.sleep(0.05)  # let the destination take it as the main channel
        status, hung = None, False
        deadline = t0 + timeout
        while d.alive():
            try:
                status = d.cmd("query-migrate", timeout=max(0.5, min(5.0, deadline - time.monotonic()))
                               ).get("status", status)
            except QemuTimeout:
                hung = True  # QMP no longer answers: the loader blocks the main loop
                break
            except QemuError:
                break  # the connection dropped: it is exiting; its exit is the verdict
            if status == "completed":
                break
            if status == "failed":
                d.wait_exit(min(5.0, max(0.5, deadline - time.monotonic())))  # its error text follows
                break
            if time.monotonic() > deadline:
                hung = True
                break
            time.sleep(0.05)
        if not hung and status != "completed":
            d.wait_exit(2.0)  # exiting: let it finish writing its error
        ram = None
        if status == "completed" and digest:
            if ram_dump is not None:
                d.cmd("pmemsave", val=0, size=mem_mb << 20, filename=str(ram_dump))
                ram = ram_digest_file(ram_dump)
            else:
                ram = pmem_digest(d, mem_mb)
        exit_code = None if hung else d.returncode
        return ReplayVerdict(status == "completed", hung, status, d.error_lines, ram,
                             time.monotonic() - t0, exit_code=exit_code)
    finally:
        stop.set()
        for s in socks:
            try:
                s.close()
            except OSError:
                pass
        for t in threads:
            t.join(2.0)
