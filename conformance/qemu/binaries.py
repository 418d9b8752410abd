"""Find QEMU binaries by version and describe how to run them.

Two layouts are understood:
* an installed QEMU (e.g. /usr/bin): it finds its own firmware and modules;
* a Debian package tree unpacked with `dpkg -x ROOT` (what scripts/setup.sh does for 10.0):
  ROOT/usr/bin/qemu-system-x86_64. Such a binary still looks in the *compiled-in* system
  folders, which hold the installed QEMU's files. Its own data folder is put first with -L, and
  its modules are isolated (see `_module_view`): QEMU_MODULE_DIR alone is not enough, because
  QEMU searches that folder first and then still falls back to the system module folder, so a
  module the unpacked tree lacks is loaded from the other build and `-device help` /
  `-dump-vmstate` abort on an assertion.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from conformance.qemu import reaper

BINARY_NAME = "qemu-system-x86_64"
ENV_VAR = "MIGCONFORM_QEMU"
_VERSION_RE = re.compile(r"QEMU emulator version (\d+)\.(\d+)(?:\.(\d+))?")
_PAIR_VERSION = re.compile(r"\d+\.\d+")  # the VERSION of a VERSION=PATH pair: a release, 10.0


class QemuNotFound(Exception):
    """A QEMU binary is missing or does not run (one-line message)."""


class QemuError(Exception):
    """A QEMU process failed (one-line message)."""


@dataclass(frozen=True)
class QemuBinary:
    version: str  # "major.minor"
    full_version: str  # "7.2.22"
    path: Path
    firmware_dirs: tuple[Path, ...] = ()
    module_dir: Path | None = None
    source: str = "PATH"  # "option", "env", "cache" or "PATH"

    def argv(self, *args: object) -> list[str]:
        out = [str(self.path)]
        for d in self.firmware_dirs:
            out += ["-L", str(d)]
        return out + [str(a) for a in args]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        # a stray QEMU_MODULE_DIR meant for another build must not reach this one
        env.pop("QEMU_MODULE_DIR", None)
        if self.module_dir is not None:
            env["QEMU_MODULE_DIR"] = str(self.module_dir)
        # a sanitizer build (scripts/build_sanitized_qemu.sh): memory errors are findings, but
        # the allocations a failed load leaves behind at exit are not (LeakSanitizer would make
        # every rejected stream a "crash"); set ASAN_OPTIONS yourself to have them
        env.setdefault("ASAN_OPTIONS", "detect_leaks=0")
        return env

    def run(self, *args: object, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """Run to completion (help/dump commands); stdin closed, output captured."""
        try:
            return reaper.run(self.argv(*args), env=self.env(), timeout=timeout)
        except subprocess.TimeoutExpired:
            raise QemuError(f"{self.path} {' '.join(map(str, args))}: no exit within {timeout:.0f} s") from None


def cache_dir() -> Path:
    if os.environ.get("MIGCONFORM_CACHE"):
        return Path(os.environ["MIGCONFORM_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "migconform"


# ---------------------------------------------------------------- version probing

@functools.lru_cache(maxsize=64)
def _probe_version(path: str, mtime_ns: int) -> str:
    # mtime_ns is part of the cache key only: a rebuilt binary is probed again
    try:
        r = reaper.run([path, "--version"], timeout=20)
    except PermissionError:
        raise QemuNotFound(f"{path}: not executable") from None
    except OSError as e:
        raise QemuNotFound(f"{path}: does not run: {e.strerror or e}") from None
    except subprocess.TimeoutExpired:
        raise QemuNotFound(f"{path}: --version did not answer within 20 s") from None
    m = _VERSION_RE.search(r.stdout)
    if r.returncode != 0 or not m:
        last = (r.stderr.strip().splitlines() or r.stdout.strip().splitlines() or ["no output"])[-1]
        raise QemuNotFound(f"{path}: does not run as QEMU (exit {r.returncode}): {last}")
    return f"{m[1]}.{m[2]}.{m[3] or 0}"


def probe_version(path: Path | str) -> str:
    """Full version ("10.0.2") reported by `PATH --version`; QemuNotFound if it does not run."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise QemuNotFound(f"{p}: no such file") from None
    except OSError as e:
        raise QemuNotFound(f"{p}: {e.strerror}") from None
    if not p.is_file():
        raise QemuNotFound(f"{p}: not a file")
    return _probe_version(str(p), st.st_mtime_ns)


# ---------------------------------------------------------------- layouts

def _unpacked_root(path: Path) -> Path | None:
    """ROOT for ROOT/usr/bin/qemu-system-*, unless ROOT is / (an installed QEMU)."""
    real = path.resolve()
    if real.parent.name == "bin" and real.parent.parent.name == "usr":
        root = real.parent.parent.parent
        if root != Path(real.anchor):
            return root
    return None


def _module_view(own: Path, system: Path) -> Path:
    """A folder for QEMU_MODULE_DIR that shows the binary's own modules and hides the
    system's: every module name present only in `system` gets an empty stub, which QEMU
    finds first, fails to open ("file too short") and does not fall back from."""
    own_names = sorted(p.name for p in own.glob("*.so"))
    hidden = sorted(p.name for p in system.glob("*.so") if not (own / p.name).exists()) if system.is_dir() else []
    if not hidden:
        return own
    key = hashlib.sha256(repr((str(own), own_names, hidden)).encode()).hexdigest()[:16]
    for base in (cache_dir() / "module-views", Path(tempfile.gettempdir()) / f"migconform-module-views-{os.getuid()}"):
        view = base / key
        if view.is_dir():
            return view
        try:
            base.mkdir(parents=True, exist_ok=True)
            tmp = reaper.make_temp_dir(".build-", base)
            for n in own_names:
                (tmp / n).symlink_to(own / n)
            for n in hidden:
                (tmp / n).touch()
            try:
                tmp.rename(view)  # atomic: parallel test workers may race here
                reaper.forget_dir(tmp)
            except OSError:
                reaper.remove_dir(tmp)
                if not view.is_dir():
                    raise
            return view
        except OSError:
            continue
    return own  # nowhere writable: QEMU_MODULE_DIR still puts its own modules first


@functools.lru_cache(maxsize=64)
def _layout(path: Path) -> tuple[tuple[Path, ...], Path | None]:
    root = _unpacked_root(path)
    if root is None:
        return (), None
    firmware = tuple(d for d in (root / "usr/share/qemu", root / "usr/share/seabios", root / "usr/lib/ipxe/qemu")
                     if d.is_dir())
    module_dir = None
    for own in sorted(root.glob("usr/lib/*/qemu")) + [root / "usr/lib/qemu"]:
        if any(own.glob("*.so")):
            module_dir = _module_view(own, Path("/") / own.relative_to(root))
            break
    return firmware, module_dir


def make_binary(path: Path | str, source: str, expect: str | None = None) -> QemuBinary:
    """Describe the binary at `path`; `expect` ("10.0") must match what it reports."""
    p = Path(path).expanduser()
    if not p.is_absolute():  # a bare name is looked up on PATH
        p = Path(shutil.which(str(p)) or p).absolute()
    full = probe_version(p)
    version = ".".join(full.split(".")[:2])
    if expect is not None and expect != version:
        raise QemuNotFound(f"{p}: reports QEMU {full}, not {expect}")
    firmware, module_dir = _layout(p)
    return QemuBinary(version, full, p, firmware, module_dir, source)


# ---------------------------------------------------------------- discovery

def parse_pairs(items: str | Iterable[str] | None, *, what: str = ENV_VAR, bare: bool = False) -> dict[str, str | None]:
    """VERSION=PATH pairs -> {version: path}, the one reading of them: the text of
    MIGCONFORM_QEMU ('7.2=/a,10.0=/b', comma or whitespace separated) or the values of a
    repeatable option such as --qemu (each comma separated; a path may hold spaces). With
    `bare`, a VERSION alone is taken too (path None). QemuNotFound, naming `what`, for an
    item that is neither."""
    parts = re.split(r"[,\s]+", items or "") if isinstance(items, str) or items is None else \
        [p for item in items for p in item.split(",")]
    out: dict[str, str | None] = {}
    for part in filter(None, (p.strip() for p in parts)):
        version, sep, path = (x.strip() for x in part.partition("="))
        if not _PAIR_VERSION.fullmatch(version) or (sep and not path) or not (sep or bare):
            form = "VERSION or VERSION=PATH" if bare else "VERSION=PATH"
            raise QemuNotFound(f"{what} takes {form} (VERSION like 10.0), got {part!r}")
        out[version] = path if sep else None
    return out


def _cache_candidates() -> list[Path]:
    return sorted(cache_dir().glob(f"qemu-*/tree/usr/bin/{BINARY_NAME}"))


def discover(pairs: Mapping[str, str] | None = None) -> dict[str, QemuBinary]:
    """version -> binary. Explicit pairs win over MIGCONFORM_QEMU, over the project cache,
    over PATH. A path named explicitly (pairs, env) that is wrong raises QemuNotFound."""
    found: dict[str, QemuBinary] = {}
    for source, given in (("option", dict(pairs or {})), ("env", parse_pairs(os.environ.get(ENV_VAR)))):
        for version, path in given.items():
            if version not in found:
                found[version] = make_binary(path, source, expect=version)
    implicit = [(p, "cache") for p in _cache_candidates()]
    on_path = shutil.which(BINARY_NAME)
    if on_path:
        implicit.append((Path(on_path), "PATH"))
    for p, source in implicit:
        try:
            b = make_binary(p, source)
        except QemuNotFound as e:  # a broken implicit candidate must not hide the others
            warnings.warn(f"ignoring {source} QEMU: {e}", stacklevel=2)
            continue
        found.setdefault(b.version, b)
    return found


def require(version: str, pairs: Mapping[str, str] | None = None) -> QemuBinary:
    found = discover(pairs)
    if version in found:
        return found[version]
    places = (["--qemu"] if pairs else []) + [ENV_VAR, str(cache_dir()), "PATH"]
    raise QemuNotFound(f"QEMU {version} not found (looked in {', '.join(places)}); "
                       f"run scripts/setup.sh or pass --qemu {version}=PATH")


def find_binary(spec: str) -> QemuBinary:
    """One binary named the way a user names it: a VERSION migconform finds (10.0),
    VERSION=PATH, or the PATH of a binary (its version asked from the binary itself).
    QemuNotFound with one line otherwise."""
    if _PAIR_VERSION.fullmatch(spec):
        return require(spec)
    version, sep, path = spec.partition("=")
    if sep and _PAIR_VERSION.fullmatch(version):
        return require(version, parse_pairs([spec], what="--qemu"))
    return make_binary(spec, "option")


# ---------------------------------------------------------------- queries

def machine_types(binary: QemuBinary) -> list[str]:
    """Machine type names (aliases such as "pc" included) from `-machine help`."""
    return list(_machine_types(binary))


@functools.lru_cache(maxsize=32)
def _machine_types(binary: QemuBinary) -> tuple[str, ...]:
    r = binary.run("-machine", "help", timeout=30)
    if r.returncode != 0:
        raise QemuError(f"{binary.path} -machine help failed: {_last_line(r.stderr)}")
    return tuple(line.split()[0] for line in r.stdout.splitlines()[1:] if line.strip())


def dump_vmstate(binary: QemuBinary, machine: str, path: Path | str, timeout: float = 60.0) -> Path:
    """Write the binary's `-dump-vmstate` JSON (device descriptions) to `path`."""
    path = Path(path)
    path.unlink(missing_ok=True)
    r = binary.run("-machine", machine, "-nodefaults", "-display", "none", "-dump-vmstate", path, timeout=timeout)
    if r.returncode != 0 or not path.is_file() or path.stat().st_size == 0:
        raise QemuError(f"{binary.path} -dump-vmstate failed (exit {r.returncode}): {_last_line(r.stderr)}")
    return path


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no error output"
