"""A real QEMU destination as a fuzzing target: one stream in, one verdict out.

Destinations are started ahead of need (`-incoming defer`, QMP connected) by a small pool of
threads, so the next one's start-up overlaps the current load. Each runs with the load trace
events on (`-D` into its private directory: the campaign's coverage), an address-space limit
(RLIMIT_AS set on the running process, so a hostile length cannot eat the host), a load
timeout (hung), no network back end and no files but the stream.
"""

from __future__ import annotations

import re
import resource
import shlex
import signal
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from conformance.qemu import reaper
from conformance.qemu.binaries import QemuBinary, QemuError
from conformance.qemu.capture import vm_args
from conformance.qemu.destination import feed, start_destination
from conformance.qemu.process import QemuExited, QemuProcess, error_lines

# Present in 7.2 and 10.0 (`-trace help`): how far a load got, section by section, field by field.
TRACE_PATTERNS = ("vmstate_load*", "qemu_loadvm_state*", "vmstate_subsection_load*", "loadvm_*")
ACCEPTED, REJECTED, CRASHED, HUNG, OOM = "accepted", "rejected", "crashed", "hung", "out-of-memory"
_CRASH_TEXT = re.compile(r"Assertion .* failed|assertion failed|\babort|ERROR:.*(assert|code should not be reached)"
                         r"|AddressSanitizer|runtime error:|Segmentation fault", re.I)
_OOM_TEXT = re.compile(r"[Cc]annot allocate memory|[Oo]ut of memory|failed to allocate")
_NUM = re.compile(r"0x[0-9a-fA-F]+|\d+")


@dataclass
class Execution:
    verdict: str
    first_error: str | None
    stderr: str
    exit_code: int | None
    events: set = field(default_factory=set)  # (event, device, field, result)
    seconds: float = 0.0


def parse_trace(text: str) -> set[tuple[str, str, str, str]]:
    """The set of (event, device, field, result) a trace log reached; numbers masked except
    where they name the outcome (ret=, exists=)."""
    out = set()
    for line in text.splitlines():
        event, _, rest = line.partition(" ")
        if not event or not event.islower() and "_" not in event:
            continue
        device = fld = result = ""
        if event == "vmstate_load_state_field":  # "timer:cpu_ticks_offset exists=1"
            where, _, result = rest.partition(" ")
            device, _, fld = where.partition(":")
        elif event == "vmstate_load_state_end":  # "timer end/0"
            device, _, result = rest.partition(" ")
        elif event in ("vmstate_load_state", "vmstate_subsection_load", "vmstate_subsection_load_good"):
            device = rest.split(" ")[0]
        elif event == "vmstate_subsection_load_bad":  # "name: reason/subsection"
            device, _, result = rest.partition(": ")
        elif event == "vmstate_load":  # "timer, timer"
            device = rest.split(",")[0]
        elif event == "qemu_loadvm_state_section_startfull":  # "0(timer) 0 2"
            device = rest.split("(")[-1].split(")")[0]
        elif event in ("loadvm_process_command",):
            result = rest.split(" ")[0]
        elif event == "vmstate_load_field_error":
            device, result = rest, "error"
        elif event == "qemu_loadvm_state_section":
            result = rest.strip()  # the section type byte
        out.add((event, device, fld, _NUM.sub("N", result) if "=" not in result else result))
    return out


def verdict_of(completed: bool, hung: bool, exit_code: int | None, stderr: str) -> tuple[str, str | None]:
    """(verdict, first error line) of one load."""
    lines = [ln for ln in error_lines(stderr) if not ln.startswith("warning:")]
    first = lines[0] if lines else None
    if hung:
        return HUNG, first
    # before crashes: GLib aborts (SIGTRAP) when an allocation the stream asked for fails
    if exit_code == -signal.SIGKILL or _OOM_TEXT.search(stderr):
        return OOM, next((ln for ln in lines if _OOM_TEXT.search(ln)), first)
    if exit_code is not None and exit_code < 0 and exit_code != -signal.SIGTERM \
            or exit_code == 134 or _CRASH_TEXT.search(stderr):
        return CRASHED, next((ln for ln in lines if _CRASH_TEXT.search(ln)), first)
    if completed:
        return ACCEPTED, None
    return REJECTED, first


class RealTarget:
    """`with RealTarget(binary, machine=..., devices=...) as t: t.run(stream_bytes)`."""

    capabilities: dict = {}
    parameters: dict = {}

    def __init__(self, binary: QemuBinary, *, machine: str, devices: str = "none", mem_mb: int = 64,
                 timeout: float = 10.0, address_space_mb: int = 4096, warm: int = 2, trace: bool = True,
                 guest_args: tuple[str, ...] = ()):
        self.binary, self.machine, self.devices, self.mem_mb = binary, machine, devices, mem_mb
        self.guest_args = tuple(guest_args)  # the seed's guest (its boot disk and devices), both sides
        self.timeout, self.limit, self.trace = timeout, address_space_mb << 20, trace
        self._dir = reaper.make_temp_dir("migconform-fuzz-")
        self._pool = ThreadPoolExecutor(max_workers=max(1, warm), thread_name_prefix="fuzz-dst")
        self._ready: deque[Future] = deque()
        self._warm = max(1, warm)
        self._n = 0
        self._lock = threading.Lock()
        self._closed = False

    def __enter__(self) -> "RealTarget":
        self._fill()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --------------------------------------------------------------- the pool
    def _start_one(self, trace_path: Path) -> QemuProcess:
        extra: list[str] = []
        if self.trace:
            for p in TRACE_PATTERNS:
                extra += ["-trace", p]
            extra += ["-D", str(trace_path)]
        q = start_destination(self.binary, machine=self.machine, devices=self.devices, mem_mb=self.mem_mb,
                              capabilities=self.capabilities, parameters=self.parameters,
                              extra_args=[*self.guest_args, *extra], cmd_timeout=self.timeout)
        try:  # guest RAM is mapped by now; a load may grow the address space only this much more
            _, hard = resource.prlimit(q.pid, resource.RLIMIT_AS)
            resource.prlimit(q.pid, resource.RLIMIT_AS, (self.limit + _vm_size(q.pid), hard))
        except (OSError, ValueError):
            pass
        return q

    def _fill(self) -> None:
        with self._lock:
            while not self._closed and len(self._ready) < self._warm:
                self._n += 1
                path = self._dir / f"trace-{self._n}.log"
                fut = self._pool.submit(self._start_one, path)
                fut.trace_path = path  # type: ignore[attr-defined]
                self._ready.append(fut)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pending = list(self._ready)
            self._ready.clear()
        for fut in pending:
            try:
                fut.result(timeout=self.timeout + 5).terminate()
            except BaseException:
                pass
        self._pool.shutdown(wait=True, cancel_futures=True)
        reaper.remove_dir(self._dir)

    # --------------------------------------------------------------- one execution
    def _next(self) -> tuple[QemuProcess, Path]:
        """A started destination from the pool (and the next one set starting) and its trace log."""
        with self._lock:
            fut = self._ready.popleft() if self._ready else None
        if fut is None:
            raise QemuError("fuzz target closed")
        self._fill()  # the next destination starts while this one loads
        try:
            q = fut.result(timeout=self.timeout + 15)
        except QemuExited as e:  # the destination did not even start: nothing was fed yet
            raise QemuError(f"destination failed to start: {e}") from None
        return q, fut.trace_path  # type: ignore[attr-defined]

    def _events(self, trace_path: Path) -> set:
        events: set = set()
        if self.trace:
            try:
                events = parse_trace(trace_path.read_text(errors="replace"))
            except OSError:
                pass
            trace_path.unlink(missing_ok=True)
        return events

    def run(self, data: bytes) -> Execution:
        q, trace_path = self._next()
        stream = self._dir / f"stream-{id(q)}.bin"
        stream.write_bytes(data)
        try:
            with q:
                v = feed(q, stream, timeout=self.timeout)
        finally:
            stream.unlink(missing_ok=True)
        verdict, first = verdict_of(v.completed, v.hung, v.exit_code, v.stderr)
        return Execution(verdict, first, v.stderr, v.exit_code, self._events(trace_path), v.duration)

    def reproduce_command(self, stream: str) -> str:
        """The plain-QEMU command line that loads `stream` as this target does."""
        args = self.binary.argv("-nodefaults", "-display", "none",
                                *vm_args(machine=self.machine, devices=self.devices, mem_mb=self.mem_mb,
                                         extra_args=self.guest_args),
                                "-incoming", f"exec:cat {shlex.quote(stream)}")
        return shlex.join(args)


class MultifdRealTarget(RealTarget):
    """A destination with the multifd capability and `channels` channels, fed a capture over
    loopback the way `migconform replay` feeds one (tcp_migration.replay_into: the main
    channel first, then the channels in id order): `run({"main.bin": …, "multifd0.bin": …})`."""

    def __init__(self, binary: QemuBinary, *, channels: int, **kw):
        self.channels = channels
        self.capabilities = {"multifd": True}
        self.parameters = {"multifd-channels": channels}
        super().__init__(binary, **kw)

    def run(self, files: dict[str, bytes]) -> Execution:  # type: ignore[override]
        from conformance.qemu.tcp_migration import replay_into

        chans = {int(k[len("multifd"):-len(".bin")]): v for k, v in files.items()
                 if k.startswith("multifd") and k.endswith(".bin")}
        q, trace_path = self._next()
        t0 = time.monotonic()
        with q:
            try:
                v = replay_into(q, files["main.bin"], chans, mem_mb=self.mem_mb, timeout=self.timeout, digest=False)
                completed, hung, code = v.completed, v.hung, v.exit_code
            except QemuError:  # it died under a QMP command: its exit is the verdict
                q.wait_exit(2.0)
                completed, hung, code = False, False, q.returncode
            if hung:
                q.terminate()  # its stderr is whole once it is dead
            stderr = q.stderr
        verdict, first = verdict_of(completed, hung, code, stderr)
        return Execution(verdict, first, stderr, code, self._events(trace_path), time.monotonic() - t0)

    def reproduce_command(self, stream: str) -> str:
        """Plain QEMU and bash (its /dev/tcp): the destination is set up over QMP, then the
        capture directory `stream` is sent, the main channel first (as `migconform replay DIR`
        does); the last line is QEMU's exit status (139: SIGSEGV; none: it hangs)."""
        qemu = shlex.join(self.binary.argv("-nodefaults", "-display", "none",
                                           *vm_args(machine=self.machine, devices=self.devices, mem_mb=self.mem_mb,
                                         extra_args=self.guest_args),
                                           "-incoming", "defer", "-qmp", "tcp:127.0.0.1:4445,server=on,wait=off"))
        qmp = ('{"execute":"qmp_capabilities"}'
               '{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"multifd","state":true}]}}'
               f'{{"execute":"migrate-set-parameters","arguments":{{"multifd-channels":{self.channels}}}}}'
               '{"execute":"migrate-incoming","arguments":{"uri":"tcp:127.0.0.1:4444"}}')
        d = shlex.quote(stream)
        sends = " ".join(f"cat {d}/multifd{k}.bin > /dev/tcp/127.0.0.1/4444 &" for k in range(self.channels))
        script = (f"{qemu} & q=$!; sleep 1; exec 3<>/dev/tcp/127.0.0.1/4445; echo {shlex.quote(qmp)} >&3; sleep 0.5; "
                  f"cat {d}/main.bin > /dev/tcp/127.0.0.1/4444 & sleep 0.1; {sends} wait $q; echo exit $?")
        return "bash -c " + shlex.quote(script)


def _vm_size(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0
