"""`migconform capture`: record what a real QEMU source writes, into a capture directory.

The directory holds the channel files and a manifest (versions, arguments, channel order,
byte counts) that `migconform check DIR` reads back.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .qemu import QemuError, QemuNotFound, capture_stream, discover
from .qemu.devices import DEVICE_SETS, make_ram_file

MANIFEST = "manifest.json"


def _kv(items: list[str] | None, what: str) -> dict:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not key:
            raise ValueError(f"--{what} takes NAME[=VALUE], got {item!r}")
        if not sep:
            out[key] = True
        elif value.lower() in ("on", "true", "yes"):
            out[key] = True
        elif value.lower() in ("off", "false", "no"):
            out[key] = False
        else:
            out[key] = int(value) if value.isdigit() else value
    return out


def add_capture_parser(sub) -> None:
    c = sub.add_parser("capture", help="record a real QEMU source's migration stream into a capture directory")
    c.add_argument("out", help="capture directory to create")
    c.add_argument("--qemu", default=None, metavar="VERSION", help="source version (default: newest found)")
    c.add_argument("--qemu-path", action="append", metavar="VERSION=PATH", help="use this binary for VERSION")
    c.add_argument("--machine", default="pc-i440fx-7.2")
    c.add_argument("--devices", default="none", choices=DEVICE_SETS)
    c.add_argument("--mem-mb", type=int, default=64)
    c.add_argument("--ram", default="zero", metavar="zero|random|SEED|FILE",
                   help="guest RAM content: zero (a fresh guest), random (seeded), or a file of exactly --mem-mb MiB")
    c.add_argument("--cap", action="append", metavar="NAME[=on|off]", help="migration capability (repeatable)")
    c.add_argument("--param", action="append", metavar="NAME=VALUE", help="migration parameter (repeatable)")
    c.add_argument("--global", dest="globals_", action="append", metavar="DRIVER.PROP=VALUE", help="-global for the source")
    c.add_argument("--timeout", type=float, default=120.0)
    c.set_defaults(func=cmd_capture)


def cmd_capture(args) -> int:
    from .cli import UsageError, _pairs

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out}: exists and is not empty")
    try:
        found = discover(_pairs(args.qemu_path))
    except QemuNotFound as e:
        raise UsageError(str(e)) from None
    if not found:
        raise UsageError("no QEMU found: run scripts/setup.sh or pass --qemu-path VERSION=PATH")
    version = args.qemu or max(found, key=lambda v: tuple(int(x) for x in v.split(".")))
    if version not in found:
        raise UsageError(f"QEMU {version} not found (have {', '.join(sorted(found))})")
    try:
        caps, params = _kv(args.cap, "cap"), _kv(args.param, "param")
    except ValueError as e:
        raise UsageError(str(e)) from None
    out.mkdir(parents=True, exist_ok=True)
    ram_file = None
    if args.ram != "zero":
        if Path(args.ram).is_file():
            ram_file = Path(args.ram)
        else:
            seed = 0 if args.ram == "random" else int(args.ram) if args.ram.isdigit() else None
            if seed is None:
                raise UsageError(f"--ram {args.ram!r}: not zero, random, a seed or a file")
            ram_file = make_ram_file(out / "guest-ram.img", args.mem_mb, seed=seed)
    binary = found[version]
    t0 = time.monotonic()
    try:
        res = capture_stream(binary, out / "main.bin", machine=args.machine, devices=args.devices, mem_mb=args.mem_mb,
                             ram_file=ram_file, capabilities=caps, parameters=params, globals_=args.globals_ or (),
                             timeout=args.timeout)
    except QemuError as e:
        raise UsageError(f"capture from QEMU {binary.full_version}: {e}") from None
    manifest = {
        "migconform": "capture/1",
        "source": {"qemu": binary.full_version, "version": version, "path": binary.path.name},
        "arguments": {"machine": args.machine, "devices": args.devices, "mem_mb": args.mem_mb, "ram": args.ram,
                      "capabilities": caps, "parameters": params, "globals": args.globals_ or []},
        "main": "main.bin",
        "channels": [],
        "bytes": {"main.bin": res.size},
        "seconds": round(time.monotonic() - t0, 3),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"captured {res.size} bytes from QEMU {binary.full_version} ({args.machine}, {args.devices}) into {out}")
    return 0
