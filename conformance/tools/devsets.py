"""The user's own devices: `--device VALUE` (repeatable, QEMU's -device syntax) and named
device sets in a file (`--devices-file FILE`, then `--devices NAME`), the same in capture and
matrix. A file is TOML (.toml) or JSON; each top-level key names a set, whose table lists the
values of QEMU options, backends first then devices, in the file's order:

    [my-nics]                                   # TOML
    netdev = ["hubport,id=u0,hubid=5"]
    device = ["e1000e,netdev=u0", "rtl8139"]

    {"my-nics": {"netdev": ["hubport,id=u0,hubid=5"], "device": ["e1000e,netdev=u0"]}}

Keys: chardev, netdev, blockdev, device. Values are checked like a manifest's device_args
(conformance.check.manifest.check_device_args): nothing naming a file, backends that need no
host set-up (hub port, null-co, null chardev), so every capture of them can be replayed.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any, Iterable, Mapping

from conformance.check import manifest as mf

KEYS = ("chardev", "netdev", "blockdev", "device")  # the order their arguments are given in
MAX_FILE_BYTES = 1 << 20
MAX_SETS = 256
_SET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")


class DeviceSetError(ValueError):
    """A one-line error naming the file and the set (or the option)."""


def device_values(values: Iterable[str], where: str = "--device") -> tuple[str, ...]:
    """`--device` values as arguments ("-device", VALUE, ...), checked."""
    args = [a for v in values for a in ("-device", v)]
    try:
        return mf.check_device_args(args, where)
    except mf.ManifestError as e:
        raise DeviceSetError(str(e)) from None


def parse_sets(doc: Any, where: str) -> dict[str, tuple[str, ...]]:
    """name -> arguments, from a decoded file."""
    if not isinstance(doc, dict) or not doc:
        raise DeviceSetError(f"{where}: expected a table of named device sets")
    if len(doc) > MAX_SETS:
        raise DeviceSetError(f"{where}: more than {MAX_SETS} device sets")
    out: dict[str, tuple[str, ...]] = {}
    for name, table in doc.items():
        if not _SET_NAME.fullmatch(name):
            raise DeviceSetError(f"{where}: set name {name!r:.80}: letters, digits and '._+-' only")
        if not isinstance(table, dict):
            raise DeviceSetError(f"{where}: set {name!r}: expected a table with {', '.join(KEYS)}")
        stray = [k for k in table if k not in KEYS]
        if stray:
            raise DeviceSetError(f"{where}: set {name!r}: unknown key {stray[0]!r:.60} (known: {', '.join(KEYS)})")
        args: list[str] = []
        for key in KEYS:
            values = table.get(key, [])
            if isinstance(values, str):
                values = [values]
            if not isinstance(values, list):
                raise DeviceSetError(f"{where}: set {name!r}: {key}: expected a list of strings")
            args += [a for v in values for a in (f"-{key}", v)]
        try:
            out[name] = mf.check_device_args(args, f"{where}: set {name!r}")
        except mf.ManifestError as e:
            raise DeviceSetError(str(e)) from None
    return out


def load_sets(path: Path | str, builtin: Iterable[str] = ()) -> dict[str, tuple[str, ...]]:
    """The sets of a TOML or JSON file; a name of a built-in set may not be redefined."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise DeviceSetError(f"{path}: {e.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise DeviceSetError(f"{path}: larger than {MAX_FILE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
        doc = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # JSONDecodeError, TOMLDecodeError: ValueErrors
        raise DeviceSetError(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'TOML'}: "
                             f"{str(e).splitlines()[0]}") from None
    sets = parse_sets(doc, str(path))
    clash = [n for n in sets if n in set(builtin)]
    if clash:
        raise DeviceSetError(f"{path}: set {clash[0]!r} is a built-in device set; choose another name")
    return sets


def resolve(name: str, builtin: Iterable[str], user: Mapping[str, tuple[str, ...]]) -> tuple[str, tuple[str, ...]]:
    """(built-in set name, the user's arguments) for `--devices NAME`."""
    if name in set(builtin):
        return name, ()
    if name in user:
        return "none", user[name]
    known = [*builtin, *user]
    raise DeviceSetError(f"unknown device set {name!r} (known: {', '.join(known)}; a file of your own: "
                         "--devices-file)")
