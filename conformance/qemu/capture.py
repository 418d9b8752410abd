"""Capture a real QEMU's outgoing migration stream into a file."""

from __future__ import annotations

import hashlib
import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from conformance.qemu import reaper
from conformance.qemu.binaries import QemuBinary, QemuError
from conformance.qemu.devices import device_args, ram_args
from conformance.qemu.process import QemuProcess


@dataclass
class CaptureResult:
    path: Path
    size: int
    version: str  # full version of the source, "7.2.22"
    machine: str
    devices: str
    mem_mb: int
    capabilities: dict[str, bool] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)
    globals_: tuple[str, ...] = ()
    ram_file: Path | None = None
    duration: float = 0.0  # seconds, QEMU start to migration completed
    status: dict = field(default_factory=dict)  # the final query-migrate answer
    source_ram: str | None = None  # ram_digest of the source's final guest RAM, when the guest ran
    source_guest_ram: str | None = None  # guest_ram_digest of the source at the end, when asked (compare_ram)


LOW_MEMORY = 1 << 20  # below 1 MiB guest memory is shadowed by ROMs and VGA: not compared


def ram_digest(ram: bytes) -> str:
    """Digest of guest RAM above the first MiB, comparable between pmemsave and a RAM file."""
    return hashlib.sha256(memoryview(ram)[LOW_MEMORY:]).hexdigest()


def ram_digest_file(path: Path | str, chunk: int = 1 << 20) -> str:
    """ram_digest() of a file, read in chunks (guest RAM can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(LOW_MEMORY)
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def pmem_digest(q: QemuProcess, mem_mb: int) -> str:
    """ram_digest() of a stopped guest's RAM, saved by QEMU (pmemsave) into a temporary file."""
    with reaper.temporary_directory("migconform-ram-") as tmp:
        q.cmd("pmemsave", val=0, size=mem_mb << 20, filename=str(tmp / "ram.bin"))
        return ram_digest_file(tmp / "ram.bin")


# The rule of the matrix's after-migration RAM comparison (guest_ram_digest): every byte of
# guest RAM from address 0 except the legacy hole 0xa0000-0xfffff (the VGA window and the
# option-ROM/BIOS shadows, which pmemsave reads through device models, not as plain RAM).
# Both sides are compared stopped, the destination before it is resumed: nothing the guest
# changes itself afterwards is in the comparison, so no other region is skipped.
COMPARE_SKIP = (0xA0000, 0x100000)


def guest_ram_digest_file(path: Path | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    lo, hi = COMPARE_SKIP
    with open(path, "rb") as f:
        h.update(f.read(lo))
        f.seek(hi)
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def guest_ram_digest(q: QemuProcess, mem_mb: int) -> str:
    """Digest of a stopped guest's RAM under the COMPARE_SKIP rule (pmemsave to a temporary file)."""
    with reaper.temporary_directory("migconform-ram-") as tmp:
        q.cmd("pmemsave", val=0, size=mem_mb << 20, filename=str(tmp / "ram.bin"))
        return guest_ram_digest_file(tmp / "ram.bin")


def vm_args(*, machine: str, devices: str = "none", mem_mb: int = 64, ram_file: Path | str | None = None,
            globals_: Iterable[str] = (), extra_args: Iterable[str] = ()) -> list[str]:
    """The guest's command line; a destination must be started with the same one."""
    args = ["-machine", machine, "-m", f"{mem_mb}M", *device_args(devices)]
    if ram_file is not None:
        args += ram_args(ram_file, mem_mb)
    for g in globals_:
        args += ["-global", g]
    return args + [str(a) for a in extra_args]


def capture_stream(binary: QemuBinary, out: Path | str, *, machine: str, devices: str = "none",
                   mem_mb: int = 64, ram_file: Path | str | None = None,
                   capabilities: Mapping[str, bool] | None = None, parameters: Mapping[str, Any] | None = None,
                   globals_: Iterable[str] = (), extra_args: Iterable[str] = (), timeout: float = 60.0,
                   transport: str = "fd", run_seconds: float = 0.0, running: bool = False,
                   stop_after: float | None = None, started: Callable[[QemuProcess], None] | None = None,
                   compare_ram: bool = False) -> CaptureResult:
    """Start a stopped (-S) source, migrate it into `out`, wait for `completed`.

    With `running` the guest runs during the migration (e.g. devices.dirtier_args), and
    `stop_after` seconds into it the guest is stopped (so that a migration kept from
    converging ends); `source_ram` is then the digest of the source's final RAM.

    transport "fd" (default) hands QEMU the open file (QMP getfd, uri fd:NAME): QEMU writes it
    itself, so every byte is in the file once the status is `completed`. "exec" uses
    `exec:cat > FILE`: QEMU reports `completed` before it closes the pipe, and on close it
    SIGTERMs a `cat` that has not exited yet (io/channel-command.c), so the tail still in the
    pipe can in principle be lost (not seen in 120 parallel captures here).

    `started(q)`, given, is called after `cont` instead of a fixed wait (e.g. until a boot
    program's heartbeat moves). `compare_ram`: `source_guest_ram` is the source's final RAM by
    guest_ram_digest (the guest is stopped then, in postmigrate).

    run_seconds > 0 lets the guest run that long first (firmware programs the devices: PCI
    config, RTC, PIT ...), so the stream carries device state a paused guest never has.
    """
    out = Path(out)
    globals_ = tuple(globals_)
    args = vm_args(machine=machine, devices=devices, mem_mb=mem_mb, ram_file=ram_file,
                   globals_=globals_, extra_args=extra_args)
    t0 = time.monotonic()
    source_ram = None
    with QemuProcess(binary, args, cmd_timeout=min(timeout, 30.0), name=f"src-{binary.version}") as q:
        q.set_capabilities(capabilities or {})
        q.set_parameters(parameters or {})
        if run_seconds > 0 or running:
            q.cmd("cont")
            # run_seconds: let the guest program its devices; running: let it start writing
            if started is not None:
                started(q)
            else:
                time.sleep(run_seconds if run_seconds > 0 else 0.2)
        if transport == "fd":
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                q.send_fd("migconform-out", fd)
            finally:
                os.close(fd)  # QEMU holds its own copy now
            q.cmd("migrate", uri="fd:migconform-out")
        elif transport == "exec":
            q.cmd("migrate", uri=f"exec:cat > {shlex.quote(str(out))}")
        else:
            raise ValueError(f"transport must be 'fd' or 'exec', not {transport!r}")
        if running and stop_after is not None:
            time.sleep(stop_after)
            q.cmd("stop")
        status = q.wait_migration(("completed",), timeout=max(1.0, timeout - (time.monotonic() - t0)))
        duration = time.monotonic() - t0
        if running:  # stopped now (postmigrate): what a destination must end up with
            source_ram = pmem_digest(q, mem_mb)
        source_guest_ram = guest_ram_digest(q, mem_mb) if compare_ram else None
    if not out.is_file():
        raise QemuError(f"capture from QEMU {binary.full_version}: {out} was not written")
    return CaptureResult(path=out, size=out.stat().st_size, version=binary.full_version, machine=machine,
                         devices=devices, mem_mb=mem_mb, capabilities=dict(capabilities or {}),
                         parameters=dict(parameters or {}), globals_=globals_,
                         ram_file=Path(ram_file) if ram_file is not None else None,
                         duration=duration, status=status, source_ram=source_ram, source_guest_ram=source_guest_ram)
