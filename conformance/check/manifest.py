"""manifest.json of a capture directory: one schema, checked on every read.

A capture directory may come from anyone, so its manifest is data, never commands: every
field has a type and a range, unknown fields are refused, file names stay inside the
directory, and a destination is started only from validated fields - a machine type name, a
named device set, a memory size, a RAM backend kind, a guest program of ours, -global
DRIVER.PROP=VALUE with a plain value, known capabilities and parameters. There is no field
for free-form QEMU arguments (capture/1 had `extra_args`; only the one form it ever wrote is
understood, as the guest program it stood for).

    m = load(directory, device_sets=DEVICE_SETS)   # ManifestError: one line naming the field
    main = resolve(directory, m.main)             # a regular file inside the directory

The minimal form {"main": ..., "channels": [...]} (written by hand, or by the pytest plugin's
users) is a valid manifest without `arguments`: enough to check, not to replay.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Mapping

from wireformat.budgets import BUDGETS, JsonInputError, load_json

FILE = "manifest.json"
FORMAT = "capture/2"
READABLE = ("capture/1", FORMAT)

# Budgets: what a manifest can make us read, start or keep.
MAX_BYTES = BUDGETS.manifest_bytes  # manifest.json itself
MAX_FILES = 256  # channel and other files named
MAX_MEM_MB = 16384  # guest RAM of a destination (pmemsave writes it all to a temporary file)
MAX_GLOBALS = 64
MAX_TEXT = 256  # any string

# what conformance.qemu can start: -S, devices.DIRTIER_BOOT_SECTOR, guests.DEVICES_BOOT_SECTOR,
# linux_guest (the kernel and initramfs scripts/setup.sh caches)
GUEST_PROGRAMS = ("paused", "dirtier", "devices", "linux")
RAM_BACKENDS = ("default", "file")  # QEMU's own pc.ram, or memory-backend-file id=ram0 (share=off)
MIGRATION_STATUSES = ("none", "setup", "cancelling", "cancelled", "active", "postcopy-active", "postcopy-paused",
                      "postcopy-recover-setup", "postcopy-recover", "completed", "failed", "colo",
                      "pre-switchover", "device", "wait-unplug")

# Migration parameters a manifest may set (query-migrate-parameters of QEMU 7.2 and 10.0),
# by value type. Left out on purpose: tls-creds/tls-hostname/tls-authz (they name objects a
# destination started from a manifest never has) and block-bitmap-mapping (a structure).
_U64 = (0, (1 << 64) - 1)
INT_PARAMETERS = frozenset({
    "announce-initial", "announce-max", "announce-rounds", "announce-step", "avail-switchover-bandwidth",
    "compress-level", "compress-threads", "cpu-throttle-increment", "cpu-throttle-initial", "decompress-threads",
    "downtime-limit", "max-bandwidth", "max-cpu-throttle", "max-postcopy-bandwidth", "multifd-channels",
    "multifd-qatzip-level", "multifd-zlib-level", "multifd-zstd-level", "throttle-trigger-threshold",
    "vcpu-dirty-limit", "x-checkpoint-delay", "x-vcpu-dirty-limit-period", "xbzrle-cache-size",
})
BOOL_PARAMETERS = frozenset({"block-incremental", "compress-wait-thread", "cpu-throttle-tailslow", "direct-io"})
ENUM_PARAMETERS: Mapping[str, tuple[str, ...]] = {
    "multifd-compression": ("none", "zlib", "zstd", "qpl", "uadk", "qatzip"),
    "zero-page-detection": ("none", "legacy", "multifd"),
    "mode": ("normal", "cpr-reboot", "cpr-transfer"),
}

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")  # one path component, a machine type
_GLOBAL = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_.-]+)=([A-Za-z0-9_.:+-]*)")  # no '/', ',' or spaces
_FULL_VERSION = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}")
_VERSION = re.compile(r"\d{1,3}\.\d{1,3}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_RAM_CONTENT = re.compile(r"zero|random|file|seed:\d{1,19}")

# the one extra_args form capture/1 wrote (the dirtier guest's boot disk)
_CAPTURE1_DIRTIER = ["-drive", "file=dirtier-boot.img,format=raw,if=ide,index=0,snapshot=on"]


class ManifestError(ValueError):
    """A manifest that does not fit the schema (one line: the field and what is wrong)."""


@dataclass(frozen=True)
class Side:
    qemu: str  # full version, "10.0.2"
    version: str  # "10.0"
    status: str | None = None  # a destination's final migration status


@dataclass(frozen=True)
class Arguments:
    """What a destination needs to be started like the source."""

    machine: str
    devices: str
    mem_mb: int
    ram_backend: str = "default"  # RAM_BACKENDS
    guest: str = "paused"  # GUEST_PROGRAMS
    ram: str = "zero"  # how the source's RAM was filled: zero, random, seed:N, file (informational)
    capabilities: dict[str, bool] = field(default_factory=dict)
    parameters: dict[str, int | bool | str] = field(default_factory=dict)
    globals_: tuple[str, ...] = ()  # both sides
    # one-sided settings: the source's alone (already in effect in the stream) and the
    # destination's alone (what a replay starts the destination with, beside the shared ones)
    source_globals: tuple[str, ...] = ()
    dest_globals: tuple[str, ...] = ()
    source_capabilities: dict[str, bool] = field(default_factory=dict)
    dest_capabilities: dict[str, bool] = field(default_factory=dict)
    source_parameters: dict[str, int | bool | str] = field(default_factory=dict)
    dest_parameters: dict[str, int | bool | str] = field(default_factory=dict)
    # the user's own devices, after the named set's (check_device_args), and the name of the
    # user's set they came from (informational)
    device_args: tuple[str, ...] = ()
    device_set: str | None = None

    def destination_settings(self) -> tuple[dict[str, bool], dict[str, int | bool | str], tuple[str, ...]]:
        """(capabilities, parameters, globals) of the destination: shared, then its own."""
        return ({**self.capabilities, **self.dest_capabilities}, {**self.parameters, **self.dest_parameters},
                (*self.globals_, *self.dest_globals))


@dataclass(frozen=True)
class Manifest:
    main: str
    channels: tuple[str, ...] = ()
    format: str | None = None  # None: the minimal hand-written form
    source: Side | None = None
    destination: Side | None = None
    arguments: Arguments | None = None
    return_path: str | None = None
    other: tuple[str, ...] = ()
    channel_order: tuple[str, ...] = ()
    guest_ram: str | None = None  # the source's initial RAM (a file here), when the guest never ran
    final_ram_sha256: dict[str, str | None] | None = None  # {"source", "destination"} after a running guest
    bytes_: dict[str, int] = field(default_factory=dict)
    seconds: float | None = None

    @property
    def files(self) -> tuple[str, ...]:
        names = [self.main, *self.channels, *self.other]
        names += [n for n in (self.return_path, self.guest_ram) if n]
        return tuple(dict.fromkeys(names))


# ---------------------------------------------------------------- value checks

Check = Callable[[Any, str], Any]


def _fail(where: str, want: str, got: Any) -> ManifestError:
    shown = repr(got)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return ManifestError(f"{where}: expected {want}, got {shown}")


def _text(pattern: re.Pattern, want: str, limit: int = MAX_TEXT) -> Check:
    def check(v: Any, where: str) -> str:
        if not isinstance(v, str) or len(v) > limit or not pattern.fullmatch(v):
            raise _fail(where, want, v)
        return v
    return check


def _int(lo: int, hi: int) -> Check:
    def check(v: Any, where: str) -> int:
        if type(v) is not int or not lo <= v <= hi:
            raise _fail(where, f"an integer from {lo} to {hi}", v)
        return v
    return check


def _bool(v: Any, where: str) -> bool:
    if type(v) is not bool:
        raise _fail(where, "true or false", v)
    return v


def _number(lo: float, hi: float) -> Check:
    def check(v: Any, where: str) -> float:
        if type(v) not in (int, float) or not math.isfinite(v) or not lo <= v <= hi:
            raise _fail(where, f"a number from {lo:g} to {hi:g}", v)
        return float(v)
    return check


def _one_of(values: Collection[str]) -> Check:
    def check(v: Any, where: str) -> str:
        if not isinstance(v, str) or v not in values:
            raise _fail(where, "one of " + ", ".join(values), v)
        return v
    return check


def _nullable(inner: Check) -> Check:
    def check(v: Any, where: str) -> Any:
        return None if v is None else inner(v, where)
    return check


def _list(item: Check, limit: int) -> Check:
    def check(v: Any, where: str) -> tuple:
        if not isinstance(v, list) or len(v) > limit:
            raise _fail(where, f"a list of at most {limit} items", v)
        return tuple(item(x, f"{where}[{i}]") for i, x in enumerate(v))
    return check


def _path(v: Any, where: str) -> str:
    """A file name relative to the capture directory: plain components, no '..', not absolute."""
    if not isinstance(v, str) or not v or len(v) > MAX_TEXT:
        raise _fail(where, "a file name inside the capture directory", v)
    parts = v.split("/")
    if v.startswith("/") or any(p in ("", ".", "..") or not _NAME.fullmatch(p) for p in parts):
        raise ManifestError(f"{where}: {v!r} is not a plain file name inside the capture directory")
    return v


def _object(fields: Mapping[str, tuple[bool, Check]], v: Any, where: str) -> dict[str, Any]:
    """Known keys only; required ones present; each value checked."""
    if not isinstance(v, dict):
        raise _fail(where, "an object", v)
    unknown = [k for k in v if k not in fields]
    if unknown:
        shown = repr(unknown[0]) if len(unknown[0]) <= 40 else repr(unknown[0][:40]) + "..."
        raise ManifestError(f"{where or 'manifest'}: unknown field {shown} (known: {', '.join(fields)})")
    out = {}
    for key, (required, check) in fields.items():
        if key in v:
            out[key] = check(v[key], _join(where, key))
        elif required:
            raise ManifestError(f"{_join(where, key)}: missing")
    return out


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def check_capabilities(v: Any, where: str = "capabilities") -> dict[str, bool]:
    from conformance.rules.compat import capabilities

    known = capabilities().capabilities
    if not isinstance(v, dict) or len(v) > len(known):
        raise _fail(where, "an object of capability: true/false", v)
    for name, state in v.items():
        if name not in known:
            raise ManifestError(f"{where}: unknown migration capability {name!r}")
        _bool(state, f"{where}.{name}")
    return dict(v)


def check_parameter(name: str, value: Any, where: str = "parameter") -> int | bool | str:
    if name in INT_PARAMETERS:
        return _int(*_U64)(value, f"{where} {name}")
    if name in BOOL_PARAMETERS:
        return _bool(value, f"{where} {name}")
    if name in ENUM_PARAMETERS:
        return _one_of(ENUM_PARAMETERS[name])(value, f"{where} {name}")
    raise ManifestError(f"{where}: unknown (or not replayable) migration parameter {name!r}")


def _parameters(v: Any, where: str) -> dict[str, int | bool | str]:
    if not isinstance(v, dict) or len(v) > len(INT_PARAMETERS) + len(BOOL_PARAMETERS) + len(ENUM_PARAMETERS):
        raise _fail(where, "an object of parameter: value", v)
    return {name: check_parameter(name, value, where) for name, value in v.items()}


def check_global(v: Any, where: str = "global") -> str:
    """DRIVER.PROP=VALUE with plain names and a plain value: nothing that names a file
    (no '/'), adds an option (no ',') or escapes the -global syntax."""
    if not isinstance(v, str) or len(v) > MAX_TEXT or not _GLOBAL.fullmatch(v):
        raise ManifestError(f"{where}: expected DRIVER.PROP=VALUE (letters, digits, '_.:+-'), got {v!r:.80}")
    return v


# A user's own devices (--device, a set from --devices-file): QEMU options whose values name
# no file (no '/') and need no host set-up: a backend is a hub port, the null block driver or
# the null chardev. Unquoted QEMU syntax, so nothing here can add another option either.
DEVICE_OPTIONS: dict[str, re.Pattern] = {
    "-device": re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(,[A-Za-z0-9_.-]+=[A-Za-z0-9_.:+-]*)*"),
    "-netdev": re.compile(r"hubport(,[A-Za-z0-9_.-]+=[A-Za-z0-9_.:+-]*)*"),
    "-blockdev": re.compile(r"driver=null-co(,[A-Za-z0-9_.-]+=[A-Za-z0-9_.:+-]*)*"),
    "-chardev": re.compile(r"null(,[A-Za-z0-9_.-]+=[A-Za-z0-9_.:+-]*)*"),
}
MAX_DEVICE_ARGS = 128


def check_device_args(v: Any, where: str = "device_args") -> tuple[str, ...]:
    """A flat argument list of (option, value) pairs, each option in DEVICE_OPTIONS with a
    value of its form."""
    if not isinstance(v, (list, tuple)) or len(v) > MAX_DEVICE_ARGS or len(v) % 2:
        raise _fail(where, f"a list of at most {MAX_DEVICE_ARGS // 2} OPTION, VALUE pairs", v)
    for i in range(0, len(v), 2):
        opt, val = v[i], v[i + 1]
        if opt not in DEVICE_OPTIONS:
            raise _fail(f"{where}[{i}]", f"one of {', '.join(DEVICE_OPTIONS)}", opt)
        if not isinstance(val, str) or len(val) > MAX_TEXT or not DEVICE_OPTIONS[opt].fullmatch(val):
            want = {"-device": "DRIVER[,PROP=VALUE...] without '/'", "-netdev": "hubport,...",
                    "-blockdev": "driver=null-co,...", "-chardev": "null,..."}[opt]
            raise _fail(f"{where}[{i + 1}]", f"{opt} {want}", val)
    return tuple(v)


def check_machine(v: Any, where: str = "machine") -> str:
    return _text(_NAME, "a machine type name", 64)(v, where)


# ---------------------------------------------------------------- the schema

def _side_fields(destination: bool) -> dict[str, tuple[bool, Check]]:
    fields: dict[str, tuple[bool, Check]] = {
        "qemu": (True, _text(_FULL_VERSION, "a QEMU version like 10.0.2")),
        "version": (True, _text(_VERSION, "a QEMU version like 10.0")),
    }
    if destination:
        fields["status"] = (False, _nullable(_one_of(MIGRATION_STATUSES)))
    else:
        fields["path"] = (False, _text(_NAME, "a binary's file name", 64))  # capture/1 wrote it; not used
    return fields


def _argument_fields(device_sets: Collection[str] | None) -> dict[str, tuple[bool, Check]]:
    devices = _one_of(device_sets) if device_sets is not None else _text(_NAME, "a device set name", 64)
    return {
        "machine": (True, check_machine),
        "devices": (True, devices),
        "mem_mb": (True, _int(1, MAX_MEM_MB)),
        "ram": (False, _text(_RAM_CONTENT, "zero, random, seed:N or file")),
        "ram_backend": (False, _one_of(RAM_BACKENDS)),
        "guest": (False, _one_of(GUEST_PROGRAMS)),
        "capabilities": (False, check_capabilities),
        "parameters": (False, _parameters),
        "globals": (False, _list(check_global, MAX_GLOBALS)),
        "source_globals": (False, _list(check_global, MAX_GLOBALS)),
        "dest_globals": (False, _list(check_global, MAX_GLOBALS)),
        "source_capabilities": (False, check_capabilities),
        "dest_capabilities": (False, check_capabilities),
        "source_parameters": (False, _parameters),
        "dest_parameters": (False, _parameters),
        "device_args": (False, check_device_args),
        "device_set": (False, _nullable(_text(_NAME, "a device set name", 64))),
    }


def parse(doc: Any, *, device_sets: Collection[str] | None = None) -> Manifest:
    """A manifest from its JSON value, or ManifestError. `device_sets`: the names a
    destination can be started with (None: any plain name)."""
    if isinstance(doc, dict) and doc.get("migconform") == "capture/1":
        doc = _upgrade_capture1(doc)
    sha = _nullable(_text(_SHA256, "a sha256 hex digest"))
    fields: dict[str, tuple[bool, Check]] = {
        "migconform": (False, _one_of(READABLE)),
        "source": (False, lambda v, w: _source(_object(_side_fields(False), v, w)) if v is not None else None),
        "destination": (False, lambda v, w: Side(**_object(_side_fields(True), v, w)) if v is not None else None),
        "arguments": (False, lambda v, w: _arguments(_object(_argument_fields(device_sets), v, w))),
        "main": (True, _path),
        "return_path": (False, _nullable(_path)),
        "channels": (False, _list(_path, MAX_FILES)),
        "channel_order": (False, _list(_path, MAX_FILES + 1)),
        "other": (False, _list(_path, MAX_FILES)),
        "guest_ram": (False, _nullable(_path)),
        "final_ram_sha256": (False, _nullable(lambda v, w: _object({"source": (True, sha), "destination": (True, sha)}, v, w))),
        "bytes": (False, _bytes),
        "seconds": (False, _nullable(_number(0, 1e9))),
    }
    d = _object(fields, doc, "")
    if "migconform" in d and (d.get("arguments") is None or d.get("source") is None):  # null is missing too
        raise ManifestError(f"{'arguments' if d.get('arguments') is None else 'source'}: missing")
    m = Manifest(main=d["main"], channels=d.get("channels", ()), format=d.get("migconform"),
                 source=d.get("source"), destination=d.get("destination"), arguments=d.get("arguments"),
                 return_path=d.get("return_path"), other=d.get("other", ()),
                 channel_order=d.get("channel_order", ()), guest_ram=d.get("guest_ram"),
                 final_ram_sha256=d.get("final_ram_sha256"), bytes_=d.get("bytes", {}), seconds=d.get("seconds"))
    named = [m.main, *m.channels, *m.other, *(n for n in (m.return_path, m.guest_ram) if n)]
    if len(m.files) != len(named):
        twice = next(n for n in named if named.count(n) > 1)
        raise ManifestError(f"{twice!r}: the same file is named twice")
    stray = [n for n in m.channel_order if n not in (m.main, *m.channels)]
    if stray:
        raise ManifestError(f"channel_order: {stray[0]!r} is neither main nor a channel")
    return m


def _source(d: dict[str, Any]) -> Side:
    return Side(qemu=d["qemu"], version=d["version"])  # `path` (capture/1) is not kept


def _bytes(v: Any, where: str) -> dict[str, int]:
    if not isinstance(v, dict) or len(v) > MAX_FILES + 3:
        raise _fail(where, f"an object of at most {MAX_FILES + 3} file: size", v)
    return {_path(k, f"{where} key"): _int(0, 1 << 62)(n, f"{where}.{k}") for k, n in v.items()}


def _arguments(d: dict[str, Any]) -> Arguments:
    return Arguments(machine=d["machine"], devices=d["devices"], mem_mb=d["mem_mb"],
                     ram_backend=d.get("ram_backend", "default"), guest=d.get("guest", "paused"),
                     ram=d.get("ram", "zero"), capabilities=d.get("capabilities", {}),
                     parameters=d.get("parameters", {}), globals_=d.get("globals", ()),
                     device_args=d.get("device_args", ()), device_set=d.get("device_set"),
                     **{k: d[k] for k in _ONE_SIDED if k in d})


_ONE_SIDED = ("source_globals", "dest_globals", "source_capabilities", "dest_capabilities", "source_parameters",
              "dest_parameters")


def _upgrade_capture1(doc: dict) -> dict:
    """capture/1 as capture/2: its `extra_args` only ever held the dirtier guest's disk, and
    its `ram` was the command-line value (a file path, possibly): only the kind is kept."""
    doc = dict(doc)
    extra = doc.pop("extra_args", [])
    args = doc.get("arguments")
    if isinstance(args, dict):
        args = dict(args)
        if extra == _CAPTURE1_DIRTIER:
            args["guest"] = "dirtier"
        elif extra != []:
            raise ManifestError("extra_args: free-form QEMU arguments are not accepted from a manifest")
        ram = args.get("ram", "zero")
        if isinstance(ram, str):
            args["ram_backend"] = "default" if ram == "zero" else "file"
            args["ram"] = ram if ram in ("zero", "random") else f"seed:{ram}" if ram.isdigit() else "file"
        doc["arguments"] = args
    elif extra != []:
        raise ManifestError("extra_args: free-form QEMU arguments are not accepted from a manifest")
    return doc


def to_json(m: Manifest) -> dict[str, Any]:
    """The JSON value of a manifest (FORMAT); parse(to_json(m)) == m."""
    out: dict[str, Any] = {"migconform": FORMAT}
    if m.source is not None:
        out["source"] = {"qemu": m.source.qemu, "version": m.source.version}
    if m.destination is not None:
        out["destination"] = {"qemu": m.destination.qemu, "version": m.destination.version,
                              "status": m.destination.status}
    if m.arguments is not None:
        a = m.arguments
        out["arguments"] = {"machine": a.machine, "devices": a.devices, "mem_mb": a.mem_mb, "ram": a.ram,
                            "ram_backend": a.ram_backend, "guest": a.guest, "capabilities": dict(a.capabilities),
                            "parameters": dict(a.parameters), "globals": list(a.globals_)}
        for k in _ONE_SIDED:  # written only when set: older readers keep reading plain captures
            if v := getattr(a, k):
                out["arguments"][k] = list(v) if k.endswith("globals") else dict(v)
        if a.device_args:
            out["arguments"]["device_args"] = list(a.device_args)
        if a.device_set:
            out["arguments"]["device_set"] = a.device_set
    out["main"] = m.main
    if m.return_path is not None:
        out["return_path"] = m.return_path
    out["channels"] = list(m.channels)
    if m.channel_order:
        out["channel_order"] = list(m.channel_order)
    if m.other:
        out["other"] = list(m.other)
    out["guest_ram"] = m.guest_ram
    out["final_ram_sha256"] = m.final_ram_sha256
    out["bytes"] = dict(m.bytes_)
    if m.seconds is not None:
        out["seconds"] = m.seconds
    return out


# ---------------------------------------------------------------- reading a directory

def load(directory: Path | str, *, device_sets: Collection[str] | None = None) -> Manifest:
    """Read and check DIRECTORY/manifest.json (a regular file of at most MAX_BYTES)."""
    path = Path(directory) / FILE
    where = str(path)
    try:
        st = os.stat(path)
    except OSError as e:
        raise ManifestError(f"{where}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ManifestError(f"{where}: not a regular file")
    if st.st_size > MAX_BYTES:
        raise ManifestError(f"{where}: {st.st_size} bytes, more than a manifest's {MAX_BYTES}")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise ManifestError(f"{where}: {e.strerror}") from None
    try:  # bad UTF-8, bad JSON, huge integer literals, nesting beyond the depth budget
        doc = load_json(raw, where, max_bytes=MAX_BYTES)
    except JsonInputError as e:
        raise ManifestError(str(e)) from None
    try:
        return parse(doc, device_sets=device_sets)
    except ManifestError as e:
        raise ManifestError(f"{where}: {e}") from None


def resolve(directory: Path | str, name: str) -> Path:
    """DIRECTORY/NAME, once it is known to be a regular file inside DIRECTORY (a symbolic
    link may point elsewhere in it, not out of it; a device or a FIFO is refused: a stream
    is read whole and must end)."""
    root = os.path.realpath(directory)
    path = Path(directory) / _path(name, "file")
    real = os.path.realpath(path)
    if not real.startswith(root + os.sep):
        raise ManifestError(f"{path}: points outside the capture directory")
    try:
        st = os.stat(real)
    except OSError as e:
        raise ManifestError(f"{path}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ManifestError(f"{path}: not a regular file")
    return path
