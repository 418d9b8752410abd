"""`migconform matrix`: real migrations over a version x machine-type grid, compared with
what the compatibility model (`conformance.rules.compat.predict`) and the stream checker
(`check_stream(..., target=dst)`) say about each of them.

A *cell* is one direction: a source QEMU version, a destination version, a machine type, a
device set and a capability set. The source (stopped, `-S`) migrates into a file
(`capture_stream`, fd: transport); the destination is started with the same command line and
capabilities and loads that file (`start_destination` + `feed`, the two steps of `load_stream`,
so that a destination that cannot start is told from one that fails to load). One capture
serves every destination of the same source/machine/devices/capabilities. A cell *agrees* when the real outcome (completed or
not) is what the model predicted and what the checker's verdict for that destination says;
a disagreement is a finding, explained from the stream at the place the destination failed
(its error lines matched with the section in the stream, the destination's own stream of the
same guest, the checker's violations and the section's decoded fields).

Pure orchestration: processes are started by `conformance.qemu` only.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from conformance.rules import compat
from conformance.check.pipeline import check_stream, trailer_body_sizer, vmstate_body_check
from conformance.check.dump import dump_stream
from conformance.check.inputs import read_vmdescription
from conformance.qemu import (
    DEVICE_SETS,
    MigrationFailed,
    QemuBinary,
    QemuError,
    QemuExited,
    QemuNotFound,
    QemuTimeout,
    QmpCommandError,
    capture_stream,
    discover,
    dump_vmstate,
    error_lines,
    feed,
    start_destination,
)
from conformance.qemu import reaper
from conformance.rules.profile import PROFILES
from conformance.rules.catalogue import Severity

__all__ = [
    "CAPABILITY_SETS", "EXCLUDED_CAPABILITIES", "MATRIX_DEVICE_SETS", "DEFAULT_MACHINES", "DEFAULT_DEVICES",
    "DEFAULT_CAPS", "CellSpec", "Grid", "Outcome", "CellResult", "MatrixResult", "CaptureStore", "Capture",
    "CheckerVerdict", "MatrixError", "parse_caps", "default_machines", "build_grid", "predict_cell", "check_capture",
    "load_into", "outcome_of_verdict", "outcome_of_exception", "failing_section", "explain_cell", "run_cell",
    "run_matrix", "add_matrix_parser", "cmd_matrix",
]

EXIT_AGREE, EXIT_DISAGREE, EXIT_USAGE = 0, 1, 2
SCHEMA = 1

# ---------------------------------------------------------------- the grid's dimensions

DEFAULT_VERSIONS = ("7.2", "10.0")

# Shared machine types of interest; each version's newest i440fx/q35 are added (default_machines).
DEFAULT_MACHINES: tuple[str, ...] = (
    "pc-i440fx-2.12", "pc-q35-2.12", "pc-i440fx-5.2", "pc-q35-5.2", "pc-i440fx-7.2", "pc-q35-7.2",
)

# A fixed -uuid for both ends: validate-uuid makes the destination compare the source's.
MATRIX_UUID = "6b3f0c4e-2f6a-4c1e-9d7e-1a2b3c4d5e6f"

# Device sets: the adapter's named sets, plus one of this module's own built from the
# adapter's extra_args (passed verbatim to both ends): storage, display, serial and two virtio
# devices with no host set-up, valid for 7.2 and 10.0 on both machine families.
_EXTRA_DEVICE_SETS: dict[str, tuple[str, ...]] = {
    "ahci-cd+vga+serial+balloon+rng": (
        "-device", "ich9-ahci,id=ahci0", "-device", "ide-cd,bus=ahci0.0",  # an empty CD-ROM
        "-device", "VGA",
        "-chardev", "null,id=ser0", "-device", "isa-serial,chardev=ser0",
        "-device", "virtio-balloon-pci", "-device", "virtio-rng-pci",
    ),
}
MATRIX_DEVICE_SETS: tuple[str, ...] = tuple(DEVICE_SETS) + tuple(_EXTRA_DEVICE_SETS)
DEFAULT_DEVICES: tuple[str, ...] = MATRIX_DEVICE_SETS

# Named capability sets, each checked to migrate via a file on 7.2 and 10.0 (both directions,
# stopped guest). "a+b" combines capabilities; any capability the compat data knows may be
# named, those in EXCLUDED_CAPABILITIES are refused with the reason.
CAPABILITY_SETS: dict[str, tuple[str, ...]] = {
    "none": (),
    # validated: listed in the configuration record, and every MEM_SIZE entry carries the block's
    # address (mr_addr); the guest's private RAM is still sent (only shared RAM would be skipped)
    "x-ignore-shared": ("x-ignore-shared",),
    # the configuration record carries the source's UUID; both ends get the same -uuid
    "validate-uuid": ("validate-uuid",),
    # harmless on a stopped guest: a single pass sends no XBZRLE page
    "xbzrle": ("xbzrle",),
    # adds a 'dirty-bitmap' section (no bitmap to send) and MIG_CMD_POSTCOPY_ADVISE
    "dirty-bitmaps": ("dirty-bitmaps",),
    "events": ("events",),
}
DEFAULT_CAPS: tuple[str, ...] = ("none", "x-ignore-shared", "validate-uuid")

EXCLUDED_CAPABILITIES: dict[str, str] = {
    "return-path": "needs a bidirectional channel; a file migration fails ('Unable to write to file: Bad file descriptor')",
    "switchover-ack": "requires return-path",
    "postcopy-ram": "needs a return path and a live destination",
    "postcopy-preempt": "needs postcopy-ram",
    "postcopy-blocktime": "postcopy only",
    "multifd": "needs tcp: (N+1 connections); the matrix migrates through a file",
    "mapped-ram": "needs a seekable file: URI ('Migration requires seekable transport'); the matrix uses fd:",
    "zero-copy-send": "needs multifd",
    "rdma-pin-all": "needs RDMA",
    "x-colo": "COLO needs a secondary VM",
    "background-snapshot": "needs userfaultfd write-protect (snapshots, not migration)",
    "pause-before-switchover": "the source stops in pre-switchover until migrate-continue",
    "release-ram": "postcopy only",
}


class MatrixError(Exception):
    """A usage or set-up error (one-line message)."""


def _vkey(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split("."))


def _mkey(machine: str) -> tuple:
    m = re.fullmatch(r"pc-(i440fx|q35)-(\d+)\.(\d+)(?:\.(\d+))?", machine)
    if not m:
        return (2, machine)
    return (0, int(m[2]), int(m[3]), int(m[4] or 0), m[1])


def parse_caps(name: str) -> tuple[str, ...]:
    """A capability set name: a named set ("none", "validate-uuid"), or capabilities joined
    with '+' ("x-ignore-shared+xbzrle"). Raises MatrixError for unknown or excluded ones."""
    name = name.strip()
    if name in CAPABILITY_SETS:
        return CAPABILITY_SETS[name]
    known = compat.capabilities().capabilities
    out = []
    for c in name.split("+"):
        c = c.strip()
        if not c:
            raise MatrixError(f"capability set {name!r}: empty capability name")
        if c in EXCLUDED_CAPABILITIES:
            raise MatrixError(f"capability {c!r} cannot be used in the matrix: {EXCLUDED_CAPABILITIES[c]}")
        if c not in known:
            raise MatrixError(f"unknown capability {c!r} (named sets: {', '.join(CAPABILITY_SETS)}; or join "
                              "capabilities with '+')")
        out.append(c)
    return tuple(dict.fromkeys(out))


def _newest(version: str, family: str) -> str | None:
    ms = [m for m in compat.load(version).machine_types if m.family == family]
    return max(ms, key=lambda m: m.level).name if ms else None


def default_machines(versions: Sequence[str]) -> list[str]:
    """DEFAULT_MACHINES that every version offers, plus each version's newest pc-i440fx and
    pc-q35 (which older versions lack: those cells are expected failures)."""
    shared = [m for m in DEFAULT_MACHINES if all(compat.load(v).has_machine(m) for v in versions)]
    newest = [n for v in versions for fam in ("pc-i440fx", "pc-q35") if (n := _newest(v, fam))]
    return sorted(dict.fromkeys(shared + newest), key=_mkey)


@dataclass(frozen=True)
class CellSpec:
    src: str  # "7.2"
    dst: str
    machine: str
    devices: str  # a MATRIX_DEVICE_SETS name
    caps: str  # a capability set name (see parse_caps)

    @property
    def id(self) -> str:
        return f"{self.src}->{self.dst}/{self.machine}/{self.devices}/{self.caps}"

    @property
    def direction(self) -> str:
        return f"{self.src}->{self.dst}"

    @property
    def capabilities(self) -> tuple[str, ...]:
        return parse_caps(self.caps)

    @property
    def capture_key(self) -> tuple[str, str, str, str]:
        return (self.src, self.machine, self.devices, self.caps)


@dataclass(frozen=True)
class Grid:
    versions: tuple[str, ...]
    machines: tuple[str, ...]
    devices: tuple[str, ...]
    caps: tuple[str, ...]

    @property
    def directions(self) -> list[tuple[str, str]]:
        return [(s, d) for s in self.versions for d in self.versions]

    def cells(self) -> list[CellSpec]:
        """Ordered so that the cells of one capture are adjacent (source first)."""
        return [CellSpec(s, d, m, dev, c) for c in self.caps for m in self.machines for dev in self.devices
                for s in self.versions for d in self.versions]

    def as_json(self) -> dict:
        return {"versions": list(self.versions), "machines": list(self.machines), "devices": list(self.devices),
                "capabilities": {c: list(parse_caps(c)) for c in self.caps},
                "directions": [f"{s}->{d}" for s, d in self.directions]}


def build_grid(versions: Sequence[str] = DEFAULT_VERSIONS, machines: Sequence[str] | None = None,
               devices: Sequence[str] | None = None, caps: Sequence[str] | None = None) -> Grid:
    """The grid, validated against the compat data (no QEMU needed). MatrixError on bad names."""
    vs = []
    for v in versions:
        try:
            vs.append(compat.load(v).version)
        except compat.UnknownVersion as e:
            raise MatrixError(str(e)) from None
    vs = sorted(dict.fromkeys(vs), key=_vkey)
    if not vs:
        raise MatrixError("no QEMU version to run")
    ms = list(dict.fromkeys(machines)) if machines else default_machines(vs)
    for m in ms:
        if not any(compat.load(v).has_machine(m) for v in vs):
            raise MatrixError(f"machine type {m!r} exists in none of QEMU {', '.join(vs)}")
    ds = list(dict.fromkeys(devices)) if devices else list(DEFAULT_DEVICES)
    for d in ds:
        if d not in MATRIX_DEVICE_SETS:
            raise MatrixError(f"unknown device set {d!r} (known: {', '.join(MATRIX_DEVICE_SETS)})")
    cs = list(dict.fromkeys(caps)) if caps else list(DEFAULT_CAPS)
    for c in cs:
        parse_caps(c)
    return Grid(tuple(vs), tuple(ms), tuple(ds), tuple(cs))


def _guest_args(devices: str, caps: Iterable[str]) -> tuple[str, list[str]]:
    """(adapter device-set name, extra_args) for a matrix device set and capability set."""
    extra: list[str] = []
    if devices in _EXTRA_DEVICE_SETS:
        name, extra = "none", list(_EXTRA_DEVICE_SETS[devices])
    else:
        name = devices
    if "validate-uuid" in caps:
        extra += ["-uuid", MATRIX_UUID]
    return name, extra


# ---------------------------------------------------------------- outcomes

OK_KINDS = ("completed",)
KINDS = ("completed", "failed", "hung", "unsupported-machine", "refused", "error")


@dataclass
class Outcome:
    """What really happened. kind: completed | failed | hung | unsupported-machine (a side
    cannot start with that machine type) | refused (a side refuses the set-up, e.g. a
    capability) | error (the harness could not get a verdict)."""

    kind: str
    side: str = "destination"  # where it happened: "source" or "destination"
    message: str = ""
    error_lines: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.kind in OK_KINDS

    def as_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping) -> "Outcome":
        return cls(**{k: d[k] for k in ("kind", "side", "message", "error_lines", "seconds") if k in d})


def _errors(lines: Iterable[str]) -> list[str]:
    return [ln for ln in lines if not ln.startswith("warning:")]


def _first_error(lines: Sequence[str], default: str) -> str:
    errs = _errors(lines)
    return errs[0] if errs else default


_UNSUPPORTED_MACHINE = re.compile(r"unsupported machine type|Unsupported machine type")


def outcome_of_verdict(v) -> Outcome:
    """An Outcome from a conformance.qemu LoadVerdict."""
    if v.completed:
        return Outcome("completed", "destination", "completed", list(v.error_lines), v.duration)
    if v.hung:
        return Outcome("hung", "destination", f"no verdict within the timeout (last status {v.status!r})",
                       list(v.error_lines), v.duration)
    # A LoadVerdict does not say whether the process died while starting or while loading
    # (a load that fails at once exits before the first query-migrate answers, status None);
    # run_cell starts the destination itself to tell. Only the machine type is recognised here.
    if v.status is None and v.exit_code is not None and _UNSUPPORTED_MACHINE.search("\n".join(v.error_lines)):
        return Outcome("unsupported-machine", "destination", _first_error(v.error_lines, "unsupported machine type"),
                       list(v.error_lines), v.duration)
    return Outcome("failed", "destination", _first_error(v.error_lines, f"status {v.status!r}, exit code {v.exit_code}"),
                   list(v.error_lines), v.duration)


def outcome_of_exception(e: BaseException, side: str, seconds: float = 0.0) -> Outcome:
    """An Outcome for an adapter exception raised on `side`."""
    if isinstance(e, QemuExited):
        lines = error_lines(e.stderr)
        if _UNSUPPORTED_MACHINE.search(e.stderr):
            return Outcome("unsupported-machine", side, _first_error(lines, "unsupported machine type"), lines, seconds)
        return Outcome("refused", side, _first_error(lines, str(e)), lines, seconds)
    if isinstance(e, QmpCommandError):
        return Outcome("refused", side, e.desc, [str(e)], seconds)
    if isinstance(e, MigrationFailed):
        return Outcome("failed", side, str(e.info.get("error-desc", e)), [str(e)], seconds)
    if isinstance(e, QemuTimeout):
        return Outcome("hung", side, str(e), [str(e)], seconds)
    return Outcome("error", side, f"{type(e).__name__}: {e}", [str(e)], seconds)


# ---------------------------------------------------------------- captures (shared across threads and processes)

@dataclass
class Capture:
    key: tuple[str, str, str, str]  # (version, machine, devices, caps)
    path: Path | None  # None: the source did not produce a stream
    outcome: Outcome | None  # the source's failure, None when the capture worked
    size: int = 0
    seconds: float = 0.0
    full_version: str = ""


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text)


class CaptureStore:
    """Captures made once per (version, machine, devices, caps) in `root`, shared by threads
    and by processes (pytest-xdist workers) through a lock file per capture."""

    def __init__(self, root: Path | str, binaries: Mapping[str, QemuBinary], *, mem_mb: int = 64,
                 timeout: float = 30.0, globals_: Sequence[str] = ()):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.binaries = dict(binaries)
        self.mem_mb = mem_mb
        self.timeout = timeout
        self.globals_ = tuple(globals_)
        self._mem: dict[tuple, Capture] = {}
        self._lock = threading.Lock()

    def _stem(self, key: tuple[str, str, str, str]) -> str:
        b = self.binaries[key[0]]
        salt = hashlib.sha256(repr((str(b.path), b.full_version, self.mem_mb, self.globals_)).encode()).hexdigest()[:10]
        return "_".join(_safe(k) for k in key) + "_" + salt

    def get(self, key: tuple[str, str, str, str]) -> Capture:
        with self._lock:
            if key in self._mem:
                return self._mem[key]
        stem = self._stem(key)
        meta = self.root / f"{stem}.json"
        with open(self.root / f"{stem}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if meta.is_file():
                    cap = self._read(key, meta)
                else:
                    cap = self._capture(key, self.root / f"{stem}.mig")
                    tmp = meta.with_suffix(".tmp")
                    tmp.write_text(json.dumps({"path": str(cap.path) if cap.path else None, "size": cap.size,
                                               "seconds": cap.seconds, "full_version": cap.full_version,
                                               "outcome": cap.outcome.as_json() if cap.outcome else None}))
                    tmp.replace(meta)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        with self._lock:
            return self._mem.setdefault(key, cap)

    def _read(self, key, meta: Path) -> Capture:
        d = json.loads(meta.read_text())
        return Capture(key, Path(d["path"]) if d["path"] else None,
                       Outcome.from_json(d["outcome"]) if d["outcome"] else None, d["size"], d["seconds"],
                       d["full_version"])

    def _capture(self, key, out: Path) -> Capture:
        version, machine, devices, caps_name = key
        binary = self.binaries[version]
        caps = parse_caps(caps_name)
        dev, extra = _guest_args(devices, caps)
        t0 = time.monotonic()
        try:
            r = capture_stream(binary, out, machine=machine, devices=dev, mem_mb=self.mem_mb,
                               capabilities={c: True for c in caps}, globals_=self.globals_, extra_args=extra,
                               timeout=self.timeout)
        except QemuError as e:
            out.unlink(missing_ok=True)
            return Capture(key, None, outcome_of_exception(e, "source", time.monotonic() - t0), 0,
                           time.monotonic() - t0, binary.full_version)
        return Capture(key, r.path, None, r.size, r.duration, binary.full_version)


# ---------------------------------------------------------------- judging a stream

@dataclass
class CheckerVerdict:
    ok: bool | None  # None: not applicable (no stream, or the destination never read it)
    violations: list[dict] = field(default_factory=list)
    note: str = ""

    def as_json(self) -> dict:
        return asdict(self)


_check_cache: dict[tuple[str, str, str], CheckerVerdict] = {}
_check_lock = threading.Lock()


def check_capture(path: Path, target: str, machine: str) -> CheckerVerdict:
    """The checker's verdict on the stream as a QEMU `target` destination with `machine`."""
    key = (str(path), target, machine)
    with _check_lock:
        if key in _check_cache:
            return _check_cache[key]
    if target not in PROFILES:
        v = CheckerVerdict(None, [], f"the checker does not model QEMU {target} destinations")
    else:
        with open(path, "rb") as f:
            rep = check_stream(f, name=path.name, target=target, machine=machine, body_sizer=trailer_body_sizer(path),
                               body_checker=vmstate_body_check)
        v = CheckerVerdict(not rep.rejected, [x.as_json() for x in rep.violations],
                           "conforms" if not rep.violations else
                           ("rejects" if rep.rejected else "accepts with violations"))
    with _check_lock:
        return _check_cache.setdefault(key, v)


# ---------------------------------------------------------------- cells

@dataclass
class CellResult:
    spec: CellSpec
    real: Outcome
    model: compat.Prediction
    checker: CheckerVerdict
    src_version: str = ""  # full versions
    dst_version: str = ""
    capture_bytes: int = 0
    capture_seconds: float = 0.0
    explanation: dict = field(default_factory=dict)  # {"summary": str, "details": [str], "section": {...}}

    @property
    def model_agrees(self) -> bool:
        return self.model.compatible == self.real.ok

    @property
    def checker_agrees(self) -> bool | None:
        return None if self.checker.ok is None else self.checker.ok == self.real.ok

    @property
    def verdict(self) -> str:
        """pass | expected-fail | disagree | error."""
        if self.real.kind == "error":
            return "error"
        if not self.model_agrees or self.checker_agrees is False:
            return "disagree"
        return "pass" if self.real.ok else "expected-fail"

    @property
    def disagreeing(self) -> list[str]:
        """Which predictions the real outcome contradicts (none for a cell without a verdict)."""
        if self.real.kind == "error":
            return []
        out = []
        if not self.model_agrees:
            out.append("model")
        if self.checker_agrees is False:
            out.append("checker")
        return out

    def as_json(self) -> dict:
        s = self.spec
        return {
            "id": s.id, "src": s.src, "dst": s.dst, "machine": s.machine, "devices": s.devices, "caps": s.caps,
            "capabilities": list(s.capabilities),
            "src_version": self.src_version, "dst_version": self.dst_version,
            "verdict": self.verdict, "disagreeing": self.disagreeing,
            "real": self.real.as_json(),
            "model": {"compatible": self.model.compatible, "reasons": list(self.model.reasons),
                      "warnings": list(self.model.warnings), "agrees": self.model_agrees},
            "checker": {**self.checker.as_json(), "agrees": self.checker_agrees},
            "capture": {"bytes": self.capture_bytes, "seconds": round(self.capture_seconds, 3)},
            "explanation": self.explanation,
        }


def predict_cell(spec: CellSpec, globals_: Sequence[str] = ()) -> compat.Prediction:
    return compat.predict(spec.src, spec.dst, spec.machine, spec.capabilities, globals_)


def run_cell(spec: CellSpec, store: CaptureStore, *, timeout: float | None = None, explain: bool = True) -> CellResult:
    """Capture (or reuse the capture), load into the destination, predict, check, explain."""
    binaries = store.binaries
    src_bin, dst_bin = binaries[spec.src], binaries[spec.dst]
    timeout = store.timeout if timeout is None else timeout
    prediction = predict_cell(spec, store.globals_)
    cap = store.get(spec.capture_key)
    caps = spec.capabilities
    if cap.outcome is not None:
        real = cap.outcome
        checker = CheckerVerdict(None, [], f"no stream: the source {_said(real)}")
    else:
        assert cap.path is not None
        checker = check_capture(cap.path, spec.dst, spec.machine)
        dev, extra = _guest_args(spec.devices, caps)
        real = load_into(dst_bin, cap.path, machine=spec.machine, devices=dev, mem_mb=store.mem_mb,
                         caps=caps, globals_=store.globals_, extra_args=extra, timeout=timeout)
        if real.kind == "refused":
            checker = CheckerVerdict(None, checker.violations,
                                     "not applicable: the destination refused its set-up before reading the stream "
                                     f"({real.message}); the checker judges streams only")
    res = CellResult(spec, real, prediction, checker, src_version=cap.full_version or src_bin.full_version,
                     dst_version=dst_bin.full_version, capture_bytes=cap.size, capture_seconds=cap.seconds)
    if explain:
        try:
            res.explanation = explain_cell(res, store, cap)
        except Exception as e:  # an explanation must never cost the verdict
            res.explanation = {"summary": f"(no explanation: {type(e).__name__}: {e})", "details": []}
    return res


def load_into(binary: QemuBinary, stream: Path, *, machine: str, devices: str, mem_mb: int, caps: Sequence[str],
              globals_: Sequence[str], extra_args: Sequence[str], timeout: float) -> Outcome:
    """What `load_stream` does, in its two steps, so that a destination that cannot start
    (machine type, device, capability) is told from one that fails to load."""
    t0 = time.monotonic()
    try:
        q = start_destination(binary, machine=machine, devices=devices, mem_mb=mem_mb,
                              capabilities={c: True for c in caps}, globals_=globals_, extra_args=extra_args,
                              cmd_timeout=min(timeout, 10.0))
    except QemuError as e:
        return outcome_of_exception(e, "destination", time.monotonic() - t0)
    try:
        with q:
            return outcome_of_verdict(feed(q, stream, timeout=max(1.0, timeout - (time.monotonic() - t0))))
    except QemuError as e:
        return outcome_of_exception(e, "destination", time.monotonic() - t0)


def _said(o: Outcome) -> str:
    return {"unsupported-machine": f"cannot start: {o.message}", "refused": f"refused the set-up: {o.message}",
            "hung": f"hung: {o.message}", "failed": f"failed: {o.message}", "error": f"harness error: {o.message}",
            "completed": "completed"}.get(o.kind, o.message)


# ---------------------------------------------------------------- explanations

_DEVICE_PATTERNS = (
    # (regex, kind); QEMU's texts (migration/savevm.c, migration/ram.c) of 7.2 and 10.0
    (re.compile(r'Unknown ramblock "([^"]+)", cannot accept migration'), "ramblock"),
    (re.compile(r"Length mismatch: (\S+): 0x([0-9a-fA-F]+) in != 0x([0-9a-fA-F]+)"), "ramblock-length"),
    (re.compile(r"error while loading state for instance 0x([0-9a-fA-F]+) of device '([^']+)'"), "load"),
    (re.compile(r"Unknown savevm section or instance '([^']+)' (-?\d+)"), "unknown"),
    (re.compile(r"savevm: unsupported version (\d+) for '([^']+)' v(\d+)"), "version"),
    (re.compile(r"Missing section footer for (\S+)"), "footer"),
    (re.compile(r"error while loading state section id (\d+)\(([^)]+)\)"), "section"),
)
# the more specific statement wins: a RAM block over the ram section that failed because of
# it, a device's own error over the generic section line
_RANK = {"ramblock": 0, "ramblock-length": 0, "unknown": 1, "version": 1, "footer": 1, "load": 2, "section": 3}


def failing_section(lines: Iterable[str]) -> dict | None:
    """The place a destination's error lines name: {"kind", "idstr", "instance_id", ...};
    for a RAM block ("ramblock", "ramblock-length") idstr is "ram" and "block" names it."""
    found = None
    for line in lines:
        for rx, kind in _DEVICE_PATTERNS:
            m = rx.search(line)
            if not m:
                continue
            if kind == "ramblock":
                d = {"kind": kind, "idstr": "ram", "instance_id": 0, "block": m[1]}
            elif kind == "ramblock-length":
                d = {"kind": kind, "idstr": "ram", "instance_id": 0, "block": m[1], "stream_length": int(m[2], 16),
                     "local_length": int(m[3], 16)}
            elif kind == "load":
                d = {"kind": kind, "idstr": m[2], "instance_id": int(m[1], 16)}
            elif kind == "unknown":
                d = {"kind": kind, "idstr": m[1], "instance_id": int(m[2])}
            elif kind == "version":
                d = {"kind": kind, "idstr": m[2], "instance_id": None, "stream_version": int(m[1]),
                     "local_version": int(m[3])}
            elif kind == "footer":
                d = {"kind": kind, "idstr": m[1], "instance_id": None}
            else:
                d = {"kind": kind, "idstr": m[2], "instance_id": None, "section_id": int(m[1])}
            if found is None or _RANK[kind] < _RANK[found["kind"]]:
                found = d
            break
    return found


_dump_cache: dict[str, dict] = {}
_vmstate_cache: dict[tuple[str, str], Any] = {}
_explain_lock = threading.Lock()


def _dump(path: Path) -> dict:
    key = str(path)
    with _explain_lock:
        if key in _dump_cache:
            return _dump_cache[key]
    with open(path, "rb") as f:
        d = dump_stream(f, name=path.name, body_sizer=trailer_body_sizer(path), fields=True)
    with _explain_lock:
        return _dump_cache.setdefault(key, d)


def _dst_vmstate(binary: QemuBinary, machine: str, root: Path):
    """The destination's -dump-vmstate for `machine` (parsed), or None."""
    from wireformat import vmstate

    key = (str(binary.path), machine)
    with _explain_lock:
        if key in _vmstate_cache:
            return _vmstate_cache[key]
    try:
        out = dump_vmstate(binary, machine, Path(root) / f"vmstate-{_safe(binary.full_version)}-{_safe(machine)}-"
                                                          f"{os.getpid()}-{threading.get_ident()}.json")
        table = vmstate.parse_dump_vmstate(out.read_text())
        out.unlink(missing_ok=True)
    except (QemuError, OSError, ValueError):
        table = None
    with _explain_lock:
        return _vmstate_cache.setdefault(key, table)


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _match_sections(sections: list[dict], idstr: str, instance: int | None) -> list[dict]:
    out = [s for s in sections if s["idstr"] == idstr and (instance is None or s["instance_id"] == instance)]
    return out or [s for s in sections if s["idstr"] == idstr]


def _describe_section(s: dict) -> str:
    dec = s.get("decoded")
    return (f"section {s['section_id']} '{s['idstr']}' instance {s['instance_id']} version {s['version_id']} "
            f"at byte {s['offset']} ({s['bytes']} bytes" + (f", decoded: {dec}" if dec else "") + ")")


def explain_cell(res: CellResult, store: CaptureStore, cap: Capture) -> dict:
    """Why the cell went as it did, from the stream at the failing place. Empty for a pass."""
    spec, real = res.spec, res.real
    details: list[str] = []
    out: dict = {"summary": "", "details": details}
    if res.verdict == "pass":
        return {}
    pred: list[str] = []  # what the wrong prediction said, after the evidence
    if not res.model_agrees:
        if res.model.compatible:
            pred.append(f"model: predicted compatible (warnings: {len(res.model.warnings)})")
        else:
            pred += [f"model: predicted failure: {r}" for r in res.model.reasons]
    if res.checker_agrees is False:
        rejects = [v for v in res.checker.violations if v["severity"] == Severity.REJECT.value]
        if res.checker.ok:
            pred.append(f"checker (target {spec.dst}): {res.checker.note}; no violation a destination rejects")
        for v in rejects[:5]:
            pred.append(f"checker (target {spec.dst}): {v['code']} at byte {v['offset']}"
                        + (f" [{v['section']}]" if v.get("section") else "") + f": {v['message']}")

    if real.kind == "unsupported-machine":
        side_ver = spec.src if real.side == "source" else spec.dst
        vd = compat.load(side_ver)
        fam = "pc-q35" if spec.machine.startswith("pc-q35") else "pc-i440fx"
        out["summary"] = (f"QEMU {side_ver} ({real.side}) has no machine type {spec.machine} "
                          f"(its newest {fam} is {_newest(vd.version, fam)}): {real.message}")
    elif real.kind == "refused":
        out["summary"] = f"the {real.side} (QEMU {spec.src if real.side == 'source' else spec.dst}) refused the set-up: {real.message}"
    elif real.kind == "error":
        out["summary"] = f"harness error on the {real.side}: {real.message}"
    elif real.kind == "completed":
        out["summary"] = (f"QEMU {spec.dst} loaded the stream of QEMU {spec.src} ({spec.machine}, {spec.devices}, "
                          f"capabilities {spec.caps}), but the " + " and the ".join(res.disagreeing)
                          + " predicted a failure")
    elif real.side == "source" or cap.path is None:
        out["summary"] = f"the source (QEMU {spec.src}) {_said(real)}"
    else:
        _explain_load_failure(res, store, cap, out)
    details += pred
    if res.verdict == "disagree" and cap.path is not None:
        details.append(_stream_facts(cap.path))
    if res.model.warnings and res.verdict == "disagree":
        details += [f"model warning: {w}" for w in res.model.warnings[:5]]
    return out


def _stream_facts(path: Path) -> str:
    """What a stream says about itself, for a reader who wonders why a model got it wrong."""
    d = _dump(path)
    conf = d.get("configuration")
    parts = [f"stream: {d.get('bytes', 0)} bytes, {len(d.get('sections', []))} sections"]
    if conf:
        caps = ", ".join(conf.get("capabilities") or []) or "none"
        parts.append(f"configuration record: machine {conf.get('machine_type')}, validated capabilities {caps}")
    else:
        parts.append("no configuration record (machine types <= 2.3 send none): the stream names no machine "
                     "type and no capability")
    if d.get("vmdescription"):
        parts.append(f"VMDESCRIPTION: {d['vmdescription'].get('devices')} devices")
    elif read_vmdescription(str(path)) is not None:
        parts.append("VMDESCRIPTION: present at the end of the file (decoding stopped before it)")
    else:
        parts.append("VMDESCRIPTION: absent (device bodies can only be framed by footers)")
    if d.get("error"):
        parts.append(f"decoding stopped: {d['error']}")
    return "; ".join(parts)


def _explain_load_failure(res: CellResult, store: CaptureStore, cap: Capture, out: dict) -> None:
    spec, real = res.spec, res.real
    details: list[str] = out["details"]
    where = failing_section(real.error_lines)
    verb = "hung" if real.kind == "hung" else "failed"
    if where is not None:
        details.append(f"destination said: {real.message}")
    if where is None:
        out["summary"] = f"QEMU {spec.dst} destination {verb}: {real.message}"
        rejects = [v for v in res.checker.violations if v["severity"] == Severity.REJECT.value]
        for v in rejects[:5]:
            details.append(f"stream: {v['code']} at byte {v['offset']}: {v['message']}")
        details += [f"destination said: {ln}" for ln in _errors(real.error_lines)[:6]]
        return
    assert cap.path is not None
    src_dump = _dump(cap.path)
    secs = _match_sections(src_dump["sections"], where["idstr"], where.get("instance_id"))
    ref = store.get((spec.dst, spec.machine, spec.devices, spec.caps))
    ref_secs = _match_sections(_dump(ref.path)["sections"], where["idstr"], where.get("instance_id")) if ref.path else []
    sec = secs[0] if secs else None
    out["section"] = ({k: sec[k] for k in ("section_id", "idstr", "instance_id", "version_id", "offset", "bytes")}
                      if sec else {"idstr": where["idstr"], "instance_id": where.get("instance_id")})
    lacks = ""
    if where["kind"].startswith("ramblock"):
        block = where["block"]
        src_blk = src_dump["ram"]["blocks"].get(block)
        ref_blk = _dump(ref.path)["ram"]["blocks"].get(block) if ref.path else None
        if where["kind"] == "ramblock":
            lacks = f"the destination (QEMU {spec.dst}) has no RAM block '{block}' for this guest"
        else:
            lacks = (f"RAM block '{block}' is {where['stream_length']:#x} bytes in the stream, "
                     f"{where['local_length']:#x} on the destination (QEMU {spec.dst})")
        if src_blk is not None:
            details.append(f"source stream (QEMU {spec.src}): MEM_SIZE lists RAM block '{block}', used_length "
                           f"{src_blk.get('used_length', 0):#x}, {src_blk.get('page', 0)} pages sent")
        if ref.path is not None:
            details.append(f"destination's own stream (QEMU {spec.dst}, same guest): " +
                           (f"RAM block '{block}' used_length {ref_blk.get('used_length', 0):#x}" if ref_blk
                            else f"no RAM block '{block}'"))
    elif where["kind"] == "unknown" or (sec is not None and ref.path is not None and not ref_secs):
        lacks = f"the destination (QEMU {spec.dst}) has no section '{where['idstr']}' for this guest"
    elif where["kind"] == "version":
        lacks = (f"the stream has version {where['stream_version']}, the destination (QEMU {spec.dst}) "
                 f"knows up to v{where['local_version']}")
    elif sec is not None and ref_secs and ref_secs[0]["version_id"] != sec["version_id"]:
        lacks = (f"version {sec['version_id']} in the stream, {ref_secs[0]['version_id']} in the destination's own "
                 f"stream of this guest")
    if where["kind"].startswith("ramblock"):
        head = f"QEMU {spec.dst} destination {verb} at RAM block '{where['block']}'"
        if sec is not None:
            head += f" (MEM_SIZE record of the ram section {sec['section_id']}, byte {sec['offset']})"
    else:
        head = f"QEMU {spec.dst} destination {verb} at '{where['idstr']}'"
        if sec is not None:
            head += f" (section {sec['section_id']}, version {sec['version_id']}, byte {sec['offset']})"
    out["summary"] = head + (f": {lacks}" if lacks else f": {real.message}")
    if sec is not None:
        details.append(f"source stream (QEMU {spec.src}): {_describe_section(sec)}")
    else:
        details.append(f"source stream (QEMU {spec.src}): no section '{where['idstr']}'")
    if ref.path is not None:
        if ref_secs:
            details.append(f"destination's own stream (QEMU {spec.dst}, same guest): {_describe_section(ref_secs[0])}")
        else:
            details.append(f"destination's own stream (QEMU {spec.dst}, same guest): no section '{where['idstr']}'")
    if where["kind"].startswith("ramblock"):  # RAM blocks have no vmsd
        details += [f"destination said: {ln}" for ln in _errors(real.error_lines)[1:5]]
        return
    dst_table = _dst_vmstate(store.binaries[spec.dst], spec.machine, store.root)
    if dst_table is not None:
        info = dst_table.lookup_idstr(where["idstr"])
        if info is not None:
            details.append(f"destination's -dump-vmstate: vmsd '{info.name}' versions {info.minimum_version_id}.."
                           f"{info.version_id}, subsections {', '.join(info.subsections) or 'none'}")
            if sec is not None and not info.accepts_version(sec["version_id"]):
                details.append(f"the destination does not accept version {sec['version_id']} of '{info.name}'")
    # fields the two ends put in the section: a subsection or field only one side has
    if sec is not None and "fields" in sec:
        src_f = sec["fields"]
        if ref_secs and "fields" in ref_secs[0]:
            dst_f = ref_secs[0]["fields"]
            only_src = [k for k in src_f if k not in dst_f]
            only_dst = [k for k in dst_f if k not in src_f]
            if only_src:
                details.append(f"only in the source's section: {', '.join(only_src)}")
            if only_dst:
                details.append(f"only in the destination's own section: {', '.join(only_dst)}")
            differ = [k for k in src_f if k in dst_f and src_f[k] != dst_f[k]]
            for k in differ[:6]:
                details.append(f"field {k}: source {_short(src_f[k], 60)}, destination's own {_short(dst_f[k], 60)}")
        for k, v in list(src_f.items())[:8]:
            details.append(f"  {k} = {_short(v)}")
    elif sec is not None and sec.get("decoded"):
        details.append(f"fields: {sec['decoded']}")
    near = [v for v in res.checker.violations
            if where["idstr"] in (v.get("section") or "") or (sec is not None and v["offset"] >= sec["offset"]
                                                             and v["offset"] <= sec["offset"] + sec["bytes"] + 64)]
    for v in near[:5]:
        details.append(f"checker: {v['severity']} {v['code']} at byte {v['offset']}: {v['message']}")
    if not near and res.checker.ok is not None:
        details.append(f"checker (target {spec.dst}): nothing reported at this section ({res.checker.note})")
    for ln in _errors(real.error_lines)[1:5]:
        details.append(f"destination said: {ln}")


# ---------------------------------------------------------------- the whole matrix

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
               workers: int = 2, mem_mb: int = 64, timeout: float = 30.0, globals_: Sequence[str] = (),
               progress: Callable[[CellResult, int, int], None] | None = None, explain: bool = True) -> MatrixResult:
    """Run every cell of `grid` with `workers` threads; one task per capture (its cells run
    one after the other, so each capture is made once before its loads)."""
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
        store = CaptureStore(workdir or tmp, binaries, mem_mb=mem_mb, timeout=timeout, globals_=globals_)

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
            futures = [pool.submit(run_group, g) for g in groups.values()]
            for f in as_completed(futures):
                for r in f.result():
                    results[r.spec] = r
        except BaseException:  # Ctrl-C: drop the queued groups, let the running ones end
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown()
    return MatrixResult(grid, [results[c] for c in cells],
                        {v: binaries[v].full_version for v in grid.versions},
                        {"mem_mb": mem_mb, "timeout": timeout, "workers": workers, "globals": list(globals_),
                         "transport": "fd: into a file, loaded with exec:cat FILE"},
                        time.monotonic() - t0)


# ---------------------------------------------------------------- command line

def _split(values: Iterable[Iterable[str]] | None) -> list[str]:
    out: list[str] = []
    for group in values or []:
        for v in ([group] if isinstance(group, str) else group):
            out += [x.strip() for x in v.split(",") if x.strip()]
    return out


def add_matrix_parser(subparsers) -> None:
    """Register `migconform matrix` on an argparse subparsers object."""
    caps_help = "; ".join(f"{k}" for k in CAPABILITY_SETS)
    m = subparsers.add_parser(
        "matrix", help="real migrations over a version x machine-type grid, compared with the model and the checker",
        description="Run real migrations both ways over source version x destination version x machine type x "
                    "device set x capability set (a cell is one direction), compare each outcome with "
                    "conformance.rules.compat's prediction and the stream checker's verdict, and explain each failure "
                    "from the stream. Exit 0 when every cell agrees, 1 when some disagree, 2 on a usage error.")
    m.add_argument("--qemu", action="append", metavar="VERSION[=PATH]",
                   help="a QEMU version to include (repeatable; default: 7.2 and 10.0, else every one found); "
                        "VERSION=PATH names the binary")
    m.add_argument("--machines", action="append", nargs="+", metavar="TYPE",
                   help="machine types (space or comma separated; default: pc-{i440fx,q35}-{2.12,5.2,7.2} that all "
                        "versions share, plus each version's newest)")
    m.add_argument("--devices", action="append", nargs="+", metavar="SET",
                   help=f"device sets (default: all of {', '.join(MATRIX_DEVICE_SETS)})")
    m.add_argument("--caps", action="append", nargs="+", metavar="SET",
                   help=f"capability sets: {caps_help}, or capabilities joined with '+' "
                        f"(default: {', '.join(DEFAULT_CAPS)})")
    m.add_argument("--global", dest="globals_", action="append", default=[], metavar="DRIVER.PROP=VALUE",
                   help="a -global for both ends of every cell (also given to the model)")
    m.add_argument("--json", metavar="PATH", help="write the results as JSON ('-': to stdout instead of the grid)")
    m.add_argument("--html", metavar="PATH", help="write a self-contained HTML report")
    m.add_argument("--workers", type=int, default=2, help="cells run in parallel (default 2)")
    m.add_argument("--mem-mb", type=int, default=64, help="guest RAM (default 64)")
    m.add_argument("--timeout", type=float, default=30.0, help="seconds before a load counts as hung (default 30)")
    m.add_argument("--keep", metavar="DIR", help="keep the captured streams in DIR (captures already there for the "
                                                  "same binary, memory size and -global are reused)")
    m.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    m.set_defaults(func=cmd_matrix)


def _binaries(items: list[str] | None) -> dict[str, QemuBinary]:
    pairs: dict[str, str] = {}
    wanted: list[str] = []
    for item in items or []:
        for part in item.split(","):
            part = part.strip()
            if not part:
                continue
            version, sep, path = part.partition("=")
            version = version.strip()
            if not re.fullmatch(r"\d+\.\d+", version):
                raise MatrixError(f"--qemu takes VERSION or VERSION=PATH (VERSION like 10.0), got {part!r}")
            if sep:
                if not path.strip():
                    raise MatrixError(f"--qemu {part!r}: empty path")
                pairs[version] = path.strip()
            wanted.append(version)
    try:
        found = discover(pairs)
    except QemuNotFound as e:
        raise MatrixError(str(e)) from None
    if not wanted:
        wanted = [v for v in DEFAULT_VERSIONS if v in found] or sorted(found, key=_vkey)
        wanted = [v for v in wanted if v in compat.versions()]
        if not wanted:
            raise MatrixError("no QEMU found: run scripts/setup.sh or pass --qemu VERSION=PATH")
    lost = [v for v in dict.fromkeys(wanted) if v not in found]
    if lost:
        raise MatrixError(f"QEMU {', '.join(lost)} not found (looked in --qemu, MIGCONFORM_QEMU, the cache, PATH); "
                          "run scripts/setup.sh or pass --qemu VERSION=PATH")
    return {v: found[v] for v in dict.fromkeys(wanted)}


def cmd_matrix(args) -> int:
    """`migconform matrix`: 0 every cell agrees, 1 some disagree, 2 usage error (one line)."""
    from conformance.tools import matrix_report as report

    try:
        if args.workers < 1:
            raise MatrixError("--workers must be at least 1")
        if args.mem_mb < 16:
            raise MatrixError("--mem-mb must be at least 16")
        if args.timeout <= 0:
            raise MatrixError("--timeout must be positive")
        try:
            for g in args.globals_:
                compat.parse_globals([g])
        except ValueError as e:
            raise MatrixError(str(e)) from None
        binaries = _binaries(args.qemu)
        grid = build_grid(list(binaries), _split(args.machines) or None, _split(args.devices) or None,
                          _split(args.caps) or None)
        for path in (args.json, args.html):
            if path and path != "-":
                parent = Path(path).expanduser().resolve().parent
                if not parent.is_dir():
                    raise MatrixError(f"{path}: no such directory {parent}")
        if args.keep:
            Path(args.keep).mkdir(parents=True, exist_ok=True)
        cells = grid.cells()
        bar = report.ProgressBar(len(cells), enabled=sys.stderr.isatty() and not args.no_progress)
        try:
            result = run_matrix(binaries, grid, workdir=args.keep, workers=args.workers, mem_mb=args.mem_mb,
                                timeout=args.timeout, globals_=args.globals_, progress=bar.update)
        finally:
            bar.close()
        data = result.as_json()
        if args.json == "-":
            print(json.dumps(data, indent=2))
        else:
            print(report.format_text(data, color=sys.stdout.isatty()))
            if args.json:
                Path(args.json).expanduser().write_text(json.dumps(data, indent=2) + "\n")
        if args.html:
            Path(args.html).expanduser().write_text(report.render_html(data))
        return result.exit_code
    except (MatrixError, QemuError, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, OSError) and e.filename:
            msg = f"{e.filename}: {e.strerror}"
        print(f"migconform: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
