"""Feed a stream file to a real QEMU destination and report what it did."""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from conformance.qemu.binaries import QemuBinary
from conformance.qemu.capture import vm_args
from conformance.qemu.process import QemuExited, QemuProcess, QemuTimeout, error_lines


@dataclass
class LoadVerdict:
    completed: bool  # query-migrate said "completed"
    status: str | None  # last query-migrate status seen, None if never asked/answered
    exit_code: int | None  # None: still running when the verdict was taken
    stderr: str
    error_lines: list[str] = field(default_factory=list)  # stderr lines, "qemu-system-x86_64: " removed
    hung: bool = False  # no verdict within the timeout: the process was killed
    version: str = ""  # full version of the destination
    duration: float = 0.0


def start_destination(binary: QemuBinary, *, machine: str, devices: str = "none", mem_mb: int = 64,
                      ram_file: Path | str | None = None, capabilities: Mapping[str, bool] | None = None,
                      parameters: Mapping[str, Any] | None = None, globals_: Iterable[str] = (),
                      extra_args: Iterable[str] = (), cmd_timeout: float = 10.0) -> QemuProcess:
    """A started `-incoming defer` destination with the source's guest command line and the
    given migration capabilities/parameters set. The caller owns it (use it as a context manager)."""
    args = vm_args(machine=machine, devices=devices, mem_mb=mem_mb, ram_file=ram_file,
                   globals_=globals_, extra_args=extra_args) + ["-incoming", "defer"]
    q = QemuProcess(binary, args, cmd_timeout=cmd_timeout, name=f"dst-{binary.version}")
    try:
        q.start()
        q.set_capabilities(capabilities or {})
        q.set_parameters(parameters or {})
    except BaseException:
        q.terminate()
        raise
    return q


def feed(q: QemuProcess, stream: Path | str, timeout: float = 30.0) -> LoadVerdict:
    """`migrate-incoming exec:cat STREAM` on a started destination; wait until the load
    completes, fails, the process exits, or `timeout` passes (hung: the process is killed).
    A completed destination is left running (e.g. for pmemsave)."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    status: str | None = None
    hung = False
    try:
        q.cmd("migrate-incoming", uri=f"exec:cat {shlex.quote(str(stream))}")
        delay = 0.005
        while True:
            try:
                info = q.cmd("query-migrate", timeout=max(0.5, min(5.0, deadline - time.monotonic())))
                status = info.get("status", status)
            except QemuTimeout:
                pass  # a destination stuck in a load coroutine does not answer QMP: hung below
            if status == "completed":
                break
            if status == "failed":
                q.wait_exit(min(5.0, max(0.0, deadline - time.monotonic())))  # its error text follows
                break
            if time.monotonic() > deadline:
                hung = True
                break
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
    except QemuExited:
        pass  # the verdict: exit code and stderr are read below
    exit_code = q.returncode
    if hung:
        q.terminate()  # read stderr once it is dead
    stderr = q.stderr
    return LoadVerdict(completed=status == "completed", status=status, exit_code=exit_code, stderr=stderr,
                       error_lines=error_lines(stderr), hung=hung, version=q.binary.full_version,
                       duration=time.monotonic() - t0)


def load_stream(binary: QemuBinary, stream: Path | str, *, machine: str, devices: str = "none",
                mem_mb: int = 64, ram_file: Path | str | None = None,
                capabilities: Mapping[str, bool] | None = None, parameters: Mapping[str, Any] | None = None,
                globals_: Iterable[str] = (), extra_args: Iterable[str] = (), timeout: float = 30.0) -> LoadVerdict:
    """Load `stream` into a fresh destination started like the source (same machine, devices,
    memory). Real QEMU 7.2/10.0 destinations exit(1) on a load error: completed=False, stderr kept.
    A destination that cannot even start (e.g. a machine type it lacks) is a verdict too."""
    t0 = time.monotonic()
    try:
        q = start_destination(binary, machine=machine, devices=devices, mem_mb=mem_mb, ram_file=ram_file,
                              capabilities=capabilities, parameters=parameters, globals_=globals_,
                              extra_args=extra_args, cmd_timeout=min(timeout, 10.0))
    except QemuExited as e:
        return LoadVerdict(completed=False, status=None, exit_code=e.returncode, stderr=e.stderr,
                           error_lines=error_lines(e.stderr), version=binary.full_version,
                           duration=time.monotonic() - t0)
    with q:
        return feed(q, stream, timeout=max(1.0, timeout - (time.monotonic() - t0)))
