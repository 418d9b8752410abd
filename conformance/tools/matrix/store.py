"""Captures made once and shared: across the threads of a run (in memory) and across
processes (pytest-xdist workers, a kept --keep folder) through a file lock per capture."""

from __future__ import annotations

import fcntl
import hashlib
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, Hashable, Mapping, Sequence, TypeVar

from conformance.qemu import QemuBinary, QemuError, capture_stream
from conformance.qemu import guests as guest_programs
from conformance.tools.matrix.cell import CheckerVerdict, Outcome, outcome_of_exception
from conformance.tools.matrix.grid import guest_args, parse_caps, safe_name
from conformance.tools.sides import Sides

V = TypeVar("V")


class Memo(Generic[V]):
    """Values computed once per key and shared by threads. Two threads may compute the
    same key at once (the computation runs outside the lock, it may start a QEMU); the
    first value stored wins and both get it."""

    def __init__(self) -> None:
        self._values: dict[Hashable, V] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, compute: Callable[[], V]) -> V:
        with self._lock:
            if key in self._values:
                return self._values[key]
        value = compute()
        with self._lock:
            return self._values.setdefault(key, value)


@dataclass
class Capture:
    key: tuple  # CellSpec.capture_key: (version, machine, devices, caps, guest, source-side settings, accel, mode)
    path: Path | None  # None: the source did not produce a stream
    outcome: Outcome | None  # the source's failure, None when the capture worked
    size: int = 0
    seconds: float = 0.0
    full_version: str = ""
    source_ram: str | None = None  # guest_ram_digest of the source once migrated (stopped)


class CaptureStore:
    """Captures made once per (version, machine, devices, caps) in `root`, shared by threads
    and by processes (pytest-xdist workers) through a lock file per capture. What is derived
    from the captures and the binaries is kept with them, for the store's life:
    `verdicts` (the checker's, per stream, target and machine), `dumps` (decoded streams,
    per path) and `vmstates` (a destination's parsed -dump-vmstate, per binary and machine)."""

    def __init__(self, root: Path | str, binaries: Mapping[str, QemuBinary], *, mem_mb: int = 64,
                 timeout: float = 30.0, globals_: Sequence[str] = (),
                 user_sets: Mapping[str, Sequence[str]] | None = None, extra_devices: Sequence[str] = (),
                 doing: Callable[[str], None] | None = None, lock_seconds: float | None = None,
                 boot_timeout: float | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.binaries = dict(binaries)
        self.mem_mb = mem_mb
        self.timeout = timeout
        # how long a running guest may take to boot (default: the timeout); a wait of its own,
        # since firmware and a kernel under TCG can take far longer than a load
        self.boot_timeout = timeout if boot_timeout is None else boot_timeout
        self.globals_ = tuple(globals_)
        self.user_sets = {k: tuple(v) for k, v in (user_sets or {}).items()}  # device sets of the user's
        self.extra_devices = tuple(extra_devices)  # --device arguments, in every cell
        self.doing = doing or (lambda what: None)  # progress: what a capture is at now
        # how long a cell waits for a capture another worker makes: that worker's capture is
        # bounded (boot and migration, each by the timeout; QEMU killed after), so this is too
        self.lock_seconds = self.boot_timeout + 2 * timeout + 30.0 if lock_seconds is None else lock_seconds
        self._captures: Memo[Capture] = Memo()
        self.verdicts: Memo[CheckerVerdict] = Memo()
        self.dumps: Memo[dict] = Memo()
        self.vmstates: Memo[Any] = Memo()
        self._guests: Memo[guest_programs.Guest] = Memo()

    def guest(self, name: str) -> guest_programs.Guest:
        """The guest `name`, its boot image written once into a folder of the store."""
        def make() -> guest_programs.Guest:
            d = self.root / f"guest-{name}"
            d.mkdir(exist_ok=True)
            return guest_programs.guest(name, d)
        return self._guests.get(name, make)

    def device_args(self, devices: str, caps, g: guest_programs.Guest, accel: str = "tcg") -> tuple[str, list[str]]:
        """grid.guest_args with the store's device sets of the user's and --device arguments,
        and the accelerator (the same on both ends)."""
        return guest_args(devices, caps, ("-accel", accel, *g.args), self.user_sets, self.extra_devices)

    def _stem(self, key: tuple) -> str:
        b = self.binaries[key[0]]
        # a user's set is salted with its arguments: a file may give a name other devices
        salt = hashlib.sha256(repr((str(b.path), b.full_version, self.mem_mb, self.globals_, key[5:],
                                    self.user_sets.get(key[2]), self.extra_devices)).encode()
                              ).hexdigest()[:10]
        return "_".join(safe_name(k) for k in key[:5]) + "_" + salt

    def get(self, key: tuple, sides: Sides | None = None) -> Capture:
        """The capture for `key`; `sides`: the one-sided settings key[5] stands for."""
        key = tuple(key)
        # (version, machine, devices, caps) and longer: the defaults for what is left out
        key += ("paused", "", "tcg", "live")[max(0, len(key) - 4):]
        return self._captures.get(key, lambda: self._locked(key, sides or Sides()))

    def _locked(self, key: tuple, sides: Sides) -> Capture:
        """The capture on disk, made under the lock by the first process that wants it."""
        stem = self._stem(key)
        meta = self.root / f"{stem}.json"
        with open(self.root / f"{stem}.lock", "w") as lock:
            if not self._lock_within(lock, self.lock_seconds):
                return Capture(key, None, Outcome(
                    "error", "source", f"the capture {stem} was still being made by another process or thread "
                    f"after {self.lock_seconds:g} s (its lock file {lock.name})"), 0, self.lock_seconds)
            try:
                if meta.is_file():
                    return self._read(key, meta)
                cap = self._capture(key, self.root / f"{stem}.mig", sides)
                tmp = meta.with_suffix(".tmp")
                tmp.write_text(json.dumps({"path": str(cap.path) if cap.path else None, "size": cap.size,
                                           "seconds": cap.seconds, "full_version": cap.full_version,
                                           "source_ram": cap.source_ram,
                                           "outcome": cap.outcome.as_json() if cap.outcome else None}))
                tmp.replace(meta)
                return cap
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @staticmethod
    def _lock_within(lock, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.1)

    def _read(self, key, meta: Path) -> Capture:
        d = json.loads(meta.read_text())
        return Capture(key, Path(d["path"]) if d["path"] else None,
                       Outcome.from_json(d["outcome"]) if d["outcome"] else None, d["size"], d["seconds"],
                       d["full_version"], d.get("source_ram"))

    def _capture(self, key, out: Path, sides: Sides) -> Capture:
        version, machine, devices, caps_name, guest_name = key[:5]
        accel, mode = key[6], key[7]
        binary = self.binaries[version]
        caps = parse_caps(caps_name)
        g = self.guest(guest_name)
        dev, extra = self.device_args(devices, caps, g, accel)
        started = None
        if g.runs:
            def started(q) -> None:
                guest_programs.wait_started(q, g, self.boot_timeout)
                self.doing(f"{what}: guest up, migrating")
                if mode == "stopped":  # programmed devices, nothing dirtied while migrating
                    q.cmd("stop")
        what = f"capture {version} {machine} {devices} guest={guest_name} accel={accel}"
        self.doing(f"{what}: booting the guest (at most {self.boot_timeout:.0f} s)" if g.runs else what)
        t0 = time.monotonic()
        try:
            r = capture_stream(binary, out, machine=machine, devices=dev, mem_mb=g.mem_mb(self.mem_mb),
                               capabilities={**{c: True for c in caps}, **sides.source_capabilities},
                               parameters=sides.source_parameters,
                               globals_=(*self.globals_, *sides.source_globals), extra_args=extra,
                               timeout=self.timeout + (self.boot_timeout if g.runs else 0.0), running=g.runs,
                               started=started,
                               compare_ram=True)
        except (QemuError, TimeoutError) as e:
            out.unlink(missing_ok=True)
            o = outcome_of_exception(e, "source", time.monotonic() - t0)
            self.doing(f"{what}: {o.kind}")
            return Capture(key, None, o, 0, time.monotonic() - t0, binary.full_version)
        return Capture(key, r.path, None, r.size, r.duration, binary.full_version, r.source_guest_ram)
