"""Migrations over loopback TCP: capture every channel of a real migration (main stream,
return path, multifd channels) through a recording proxy, and replay a capture into a real
destination, one connection per channel, in a chosen delivery schedule.

A destination that does not finish is a verdict (bounded wait, then it is killed), never a
hang of ours: real destinations hang on bad multifd data.
"""

from __future__ import annotations

import hashlib
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from conformance.qemu.binaries import QemuBinary
from conformance.qemu.capture import vm_args
from conformance.qemu.destination import start_destination
from conformance.qemu.process import QemuError, QemuProcess
from conformance.qemu.tcp_capture import TcpRecorder

MULTIFD_MAGIC = b"\x11\x22\x33\x44"


LOW_MEMORY = 1 << 20  # below 1 MiB guest memory is shadowed by ROMs and VGA: not compared


def ram_digest(ram: bytes) -> str:
    """Digest of guest RAM above the first MiB, comparable between pmemsave and a RAM file."""
    return hashlib.sha256(memoryview(ram)[LOW_MEMORY:]).hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
                     stop_after: float | None = None, timeout: float = 60.0) -> ChannelCapture:
    """A real source migrating to a real destination through a recording proxy. With
    `running` the source guest runs (e.g. the dirtying boot sector of devices.dirtier_args)
    and the final guest RAM of both sides is compared by digest; `stop_after` seconds into
    the migration the source guest is stopped, so that a migration kept from converging
    (a tiny downtime-limit) iterates over several dirty-sync rounds and then ends."""
    caps = dict(capabilities or {})
    params = dict(parameters or {})
    t0 = time.monotonic()
    port = free_port()
    extra_args = list(extra_args)
    digests = [None, None]
    with start_destination(dst, machine=machine, devices=devices, mem_mb=mem_mb, ram_file=dst_ram_file,
                           capabilities=caps, parameters=params, globals_=globals_, extra_args=extra_args) as d:
        d.cmd("migrate-incoming", uri=f"tcp:127.0.0.1:{port}")
        with TcpRecorder(("127.0.0.1", port)) as rec, \
                QemuProcess(src, vm_args(machine=machine, devices=devices, mem_mb=mem_mb, ram_file=ram_file,
                                         globals_=globals_, extra_args=extra_args), name=f"src-{src.version}") as s:
            s.set_capabilities(caps)
            s.set_parameters(params)
            if running:
                s.cmd("cont")
                time.sleep(0.2)  # let the guest start writing before the first pass
            s.cmd("migrate", uri=rec.uri)
            if running and stop_after is not None:
                time.sleep(stop_after)
                s.cmd("stop")
            status = s.wait_migration(("completed",), timeout=timeout)
            dst_status = d.wait_migration(("completed",), timeout=max(1.0, timeout - (time.monotonic() - t0)))
            rec.wait_closed(5.0)
            if running:  # both guests are stopped now: their RAM must be equal
                for i, q in enumerate((s, d)):
                    with tempfile.TemporaryDirectory(prefix="migconform-ram-") as tmp:
                        q.cmd("pmemsave", val=0, size=mem_mb << 20, filename=f"{tmp}/ram.bin")
                        digests[i] = ram_digest(Path(f"{tmp}/ram.bin").read_bytes())
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
    hung: bool
    status: str | None
    error_lines: list[str]
    ram_sha256: str | None  # ram_digest() of the destination's guest RAM (pmemsave) when it completed
    seconds: float


def _sender(sock: socket.socket, data: bytes, chunk: int, pause: float, delay: float, stop: threading.Event) -> None:
    try:
        if delay:
            stop.wait(delay)
        view = memoryview(data)
        step = chunk or len(data) or 1
        while view and not stop.is_set():
            sock.sendall(view[:step])
            view = view[step:]
            if pause:
                stop.wait(pause)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the destination went away: its verdict says why


def replay(dst: QemuBinary, main: bytes, channels: Mapping[int, bytes], *, machine: str, devices: str = "none",
           mem_mb: int = 64, ram_file: Path | str | None = None, capabilities: Mapping[str, bool] | None = None,
           parameters: Mapping[str, Any] | None = None, globals_: Iterable[str] = (), schedule: Schedule | None = None,
           timeout: float = 30.0, ram_dump: Path | None = None, extra_args: Iterable[str] = ()) -> ReplayVerdict:
    """Play a capture into a real destination: the main stream first (a 7.2 destination
    tells channels apart by the order of connections), then the multifd channels in id
    order, each sent by its own thread as the schedule says."""
    schedule = schedule or Schedule()
    port = free_port()
    t0 = time.monotonic()
    stop = threading.Event()
    threads, socks = [], []
    with start_destination(dst, machine=machine, devices=devices, mem_mb=mem_mb, ram_file=ram_file,
                           capabilities=capabilities, parameters=parameters, globals_=globals_,
                           extra_args=extra_args) as d:
        d.cmd("migrate-incoming", uri=f"tcp:127.0.0.1:{port}")
        try:
            order: Sequence[tuple[str, bytes]] = [("main", main)] + [(f"multifd{i}", channels[i]) for i in sorted(channels)]
            for name, data in order:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5.0)
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
            while True:
                if not d.alive():
                    break
                try:
                    status = d.query_migrate().get("status")
                except QemuError:
                    hung = True  # QMP no longer answers: the loader blocks the main loop
                    break
                if status in ("completed", "failed"):
                    break
                if time.monotonic() > deadline:
                    hung = True
                    break
                time.sleep(0.05)
            digest = None
            if status == "completed":
                with tempfile.TemporaryDirectory(prefix="migconform-ram-") as tmp:
                    dump = ram_dump or Path(tmp) / "ram.bin"
                    d.cmd("pmemsave", val=0, size=mem_mb << 20, filename=str(dump))
                    digest = ram_digest(Path(dump).read_bytes())
            return ReplayVerdict(status == "completed", hung, status, d.error_lines, digest, time.monotonic() - t0)
        finally:
            stop.set()
            for s in socks:
                try:
                    s.close()
                except OSError:
                    pass
            for t in threads:
                t.join(2.0)
