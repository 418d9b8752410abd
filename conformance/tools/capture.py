"""`migconform capture`: record what a real QEMU source writes, into a capture directory;
`migconform replay`: play one into a real destination. (Their options: cli/capture.py.)

The directory holds the channel files and a manifest (versions, arguments, channel order,
byte counts) that `migconform check DIR` reads back (layout: check/capture_dir.py).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from conformance.check.capture_dir import SCHEMA, read_manifest, write_manifest
from conformance.errors import UsageError
from conformance.qemu import QemuError, QemuNotFound, capture_stream, discover, parse_pairs
from conformance.qemu.devices import make_ram_file
from conformance.versions import VERSIONS, version_key


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


def cmd_capture(args) -> int:
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out}: exists and is not empty")
    try:
        found = discover(parse_pairs(args.qemu_path or [], what="--qemu-path"))
    except QemuNotFound as e:
        raise UsageError(str(e)) from None
    if not found:
        raise UsageError("no QEMU found: run scripts/setup.sh or pass --qemu-path VERSION=PATH")
    version = args.qemu or max(found, key=version_key)
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
    if args.dirty is not None and not args.channels:
        raise UsageError("--dirty needs --channels (a TCP migration to a real destination)")
    if args.channels:
        return _capture_channels(args, out, found, binary, caps, params, ram_file, t0)
    try:
        res = capture_stream(binary, out / "main.bin", machine=args.machine, devices=args.devices, mem_mb=args.mem_mb,
                             ram_file=ram_file, capabilities=caps, parameters=params, globals_=args.globals_ or (),
                             timeout=args.timeout)
    except QemuError as e:
        raise UsageError(f"capture from QEMU {binary.full_version}: {e}") from None
    manifest = {
        "migconform": SCHEMA,
        "source": {"qemu": binary.full_version, "version": version, "path": binary.path.name},
        "arguments": {"machine": args.machine, "devices": args.devices, "mem_mb": args.mem_mb, "ram": args.ram,
                      "capabilities": caps, "parameters": params, "globals": args.globals_ or []},
        "main": "main.bin",
        "channels": [],
        "bytes": {"main.bin": res.size},
        "seconds": round(time.monotonic() - t0, 3),
    }
    write_manifest(out, manifest)
    print(f"captured {res.size} bytes from QEMU {binary.full_version} ({args.machine}, {args.devices}) into {out}")
    return 0


def _capture_channels(args, out: Path, found: dict, binary, caps: dict, params: dict, ram_file, t0: float) -> int:
    from conformance.qemu.tcp_migration import capture_channels

    dest = found.get(args.dest or binary.version)
    if dest is None:
        raise UsageError(f"destination QEMU {args.dest} not found")
    caps = {"multifd": True, **caps}
    params = {"multifd-channels": args.channels, **params}
    extra = []
    if args.dirty is not None:
        from conformance.qemu.devices import dirtier_args, make_dirtier_disk

        params = {"max-bandwidth": 1 << 20, "downtime-limit": 1, **params}
        extra = dirtier_args(make_dirtier_disk(out / "dirtier-boot.img"))
    dst_ram = make_ram_file(out / "destination-ram.img", args.mem_mb, content=b"") if ram_file else None
    try:
        cap = capture_channels(binary, dest, machine=args.machine, devices=args.devices, mem_mb=args.mem_mb,
                               ram_file=ram_file, dst_ram_file=dst_ram, capabilities=caps, parameters=params,
                               globals_=args.globals_ or (), extra_args=extra, running=args.dirty is not None,
                               stop_after=args.dirty, timeout=args.timeout)
    except QemuError as e:
        raise UsageError(f"capture QEMU {binary.full_version} -> {dest.full_version}: {e}") from None
    finally:
        if dst_ram is not None:
            dst_ram.unlink(missing_ok=True)
    files = {"main.bin": cap.main, "return-path.bin": cap.return_path}
    files.update({f"multifd{i}.bin": data for i, data in sorted(cap.multifd.items())})
    files.update({f"other{i}.bin": data for i, data in enumerate(cap.other)})
    for name, data in files.items():
        (out / name).write_bytes(data)
    manifest = {
        "migconform": SCHEMA,
        "source": {"qemu": binary.full_version, "version": binary.version},
        "destination": {"qemu": dest.full_version, "version": dest.version, "status": cap.destination_status},
        "arguments": {"machine": args.machine, "devices": args.devices, "mem_mb": args.mem_mb, "ram": args.ram,
                      "capabilities": caps, "parameters": params, "globals": args.globals_ or []},
        "main": "main.bin",
        "return_path": "return-path.bin",
        "channels": [f"multifd{i}.bin" for i in sorted(cap.multifd)],
        "channel_order": ["main.bin"] + [f"multifd{i}.bin" for i in sorted(cap.multifd)],
        "guest_ram": "guest-ram.img" if ram_file is not None and ram_file.parent == out and args.dirty is None else None,
        "final_ram_sha256": {"source": cap.source_ram, "destination": cap.destination_ram} if args.dirty is not None else None,
        "extra_args": ["-drive", "file=dirtier-boot.img,format=raw,if=ide,index=0,snapshot=on"] if extra else [],
        "bytes": {name: len(data) for name, data in files.items()},
        "seconds": round(time.monotonic() - t0, 3),
    }
    write_manifest(out, manifest)
    print(f"captured main + {len(cap.multifd)} multifd channels from QEMU {binary.full_version} to "
          f"{dest.full_version} ({args.machine}) into {out}")
    return 0


def parse_schedule(spec: str):
    """'multifd1:chunk=4096,pause=0.001;main:delay=0.1' -> Schedule."""
    from conformance.qemu.tcp_migration import Schedule

    sched = Schedule()
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        chan, _, opts = part.partition(":")
        for opt in filter(None, opts.split(",")):
            key, _, value = opt.partition("=")
            try:
                if key == "chunk":
                    sched.chunk[chan] = int(value)
                elif key == "pause":
                    sched.pause[chan] = float(value)
                elif key == "delay":
                    sched.start_delay[chan] = float(value)
                else:
                    raise ValueError(key)
            except ValueError:
                raise ValueError(f"schedule {part!r}: expected chunk=N, pause=S or delay=S") from None
    return sched


def cmd_replay(args) -> int:
    """Replay, then compare the destination with the capture's own verdict and RAM."""
    from conformance.check.inputs import open_stream
    from conformance.check.pipeline import check_capture
    from conformance.check.report import format_report
    from conformance.qemu.tcp_migration import ram_digest, replay

    d = Path(args.capture)
    try:
        m = read_manifest(d)
        a = m["arguments"]
    except (OSError, ValueError, KeyError) as e:
        raise UsageError(f"{d}: not a capture directory ({e})") from None
    try:
        schedule = parse_schedule(args.schedule)
    except ValueError as e:
        raise UsageError(str(e)) from None
    try:
        found = discover(parse_pairs(args.qemu_path or [], what="--qemu-path"))
    except QemuNotFound as e:
        raise UsageError(str(e)) from None
    version = args.qemu or (max(found, key=version_key) if found else None)
    if version not in found:
        raise UsageError(f"QEMU {version} not found")
    channels = {int(Path(c).stem.removeprefix("multifd")): (d / c).read_bytes() for c in m.get("channels", [])}
    main = (d / m["main"]).read_bytes()
    # what the model says first
    rep = check_capture(open_stream(str(d / m["main"]))[0],
                        [(c, open_stream(str(d / c))[0]) for c in m.get("channels", [])],
                        name=str(d), target=version if version in VERSIONS else None)
    dst_ram = make_ram_file(d / "replay-ram.img", a["mem_mb"], content=b"") if m.get("guest_ram") else None
    try:
        v = replay(found[version], main, channels, machine=a["machine"], devices=a["devices"], mem_mb=a["mem_mb"],
                   ram_file=dst_ram, capabilities=a["capabilities"], parameters=a["parameters"],
                   globals_=a.get("globals", ()), schedule=schedule, timeout=args.timeout,
                   extra_args=[x.replace("file=dirtier-boot.img", f"file={d / 'dirtier-boot.img'}")
                               for x in m.get("extra_args", [])])
    finally:
        if dst_ram is not None:
            dst_ram.unlink(missing_ok=True)
    ram_equal = None
    if v.ram_sha256 is not None and m.get("guest_ram"):
        ram_equal = v.ram_sha256 == ram_digest((d / m["guest_ram"]).read_bytes())
    elif v.ram_sha256 is not None and (m.get("final_ram_sha256") or {}).get("source"):
        ram_equal = v.ram_sha256 == m["final_ram_sha256"]["source"]
    outcome = "completed" if v.completed else "hung" if v.hung else f"failed: {(v.error_lines or [v.status])[0]}"
    agrees = v.completed == (not rep.rejected) and ram_equal is not False
    result = {"destination": found[version].full_version, "schedule": schedule.describe(), "outcome": outcome,
              "ram_equal": ram_equal, "model": rep.verdict, "model_rejects": rep.rejected, "agrees": agrees,
              "violations": [x.as_json() for x in rep.violations], "seconds": round(v.seconds, 2)}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_report(rep))
        print(f"  replay into QEMU {found[version].full_version} ({schedule.describe()}): {outcome}"
              + ("" if ram_equal is None else f", guest RAM {'equals' if ram_equal else 'DIFFERS FROM'} the source's")
              + f" -> {'agrees' if agrees else 'DISAGREES'} with the model")
    return 0 if agrees else 1
