"""`migconform capture`: record what a real QEMU source writes, into a capture directory;
`migconform replay`: play one into a real destination. (Their options: cli/capture.py.)

The directory holds the channel files and a manifest (conformance.check.manifest: versions,
the guest's description, channel order, byte counts) that `check DIR` and `replay DIR` read
back. A capture is made in a temporary directory beside its target and renamed into place at
the end: an interrupted capture leaves nothing, and the same command then works.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from pathlib import Path

from conformance.check import manifest as mf
from conformance.errors import UsageError
from conformance.qemu import QemuError, QemuNotFound, capture_stream, discover, parse_pairs, reaper
from conformance.qemu import guests as guest_programs
from conformance.qemu import linux_guest
from conformance.tools import devsets
from conformance.qemu.devices import DEVICE_SETS, dirtier_args, make_dirtier_disk, make_ram_file
from conformance.tools import sides as one_sided
from conformance.versions import VERSIONS, version_key

MANIFEST = mf.FILE
# a guest kept from converging: 1 MiB/s and a 1 ms downtime limit, until it is stopped
DIRTY_PARAMETERS = {"max-bandwidth": 1 << 20, "downtime-limit": 1}


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


def _first_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.is_dir():
        path = path.parent
    return path


def _validated_settings(args) -> tuple[dict, dict, list[str]]:
    """Capabilities, parameters and -globals as a manifest may carry them (a capture must be
    replayable from its manifest alone)."""
    caps, params = _kv(args.cap, "cap"), _kv(args.param, "param")
    mf.check_machine(args.machine, "--machine")
    if not 1 <= args.mem_mb <= mf.MAX_MEM_MB:
        raise ValueError(f"--mem-mb: from 1 to {mf.MAX_MEM_MB}")
    mf.check_capabilities(caps, "--cap")
    for name, value in params.items():
        mf.check_parameter(name, value, "--param")
    globals_ = [mf.check_global(g, "--global") for g in args.globals_ or []]
    return caps, params, globals_


def cmd_capture(args) -> int:
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{out}: exists and is not empty")
    try:
        found = discover(parse_pairs(args.qemu_path or [], what="--qemu-path"))
    except QemuNotFound as e:
        raise UsageError(str(e)) from None
    if not found:
        raise UsageError("no QEMU found: run scripts/setup.sh or pass --qemu-path VERSION=PATH")
    version = args.qemu or (max(found, key=version_key) if found else None)
    if version not in found:
        raise UsageError(f"QEMU {version} not found (have {', '.join(sorted(found))})")
    try:
        caps, params, globals_ = _validated_settings(args)
        sides = one_sided.from_args(args)
    except (ValueError, mf.ManifestError) as e:
        raise UsageError(str(e)) from None
    guest = args.guest or ("dirtier" if args.dirty is not None else "paused")
    if args.dirty is not None and guest != "dirtier":
        raise UsageError(f"--dirty boots the dirtier guest, not --guest {guest}")
    try:
        user_sets = devsets.load_sets(args.devices_file, DEVICE_SETS) if args.devices_file else {}
        devices, set_args = devsets.resolve(args.devices, DEVICE_SETS, user_sets)
        device_args = (*set_args, *devsets.device_values(args.device))
    except devsets.DeviceSetError as e:
        raise UsageError(str(e)) from None
    if guest == "linux" and args.mem_mb < linux_guest.MIN_MEM_MB:
        if args.mem_mb != DEFAULT_MEM_MB:
            raise UsageError(f"--guest linux needs --mem-mb {linux_guest.MIN_MEM_MB} at least")
        args.mem_mb = linux_guest.MIN_MEM_MB  # the default is too small for it
    if args.dirty is not None and args.dirty < 0:
        raise UsageError("--dirty takes a number of seconds")
    if args.channels < 0:
        raise UsageError("--channels takes a number of channels")
    user_ram = None
    if args.ram not in ("zero", "random") and not args.ram.isdigit():
        if not Path(args.ram).is_file():
            raise UsageError(f"--ram {args.ram!r}: not zero, random, a seed or a file")
        user_ram = Path(args.ram).absolute()
    # everything goes into a directory beside the target, renamed into place once complete
    staging = reaper.make_temp_dir(f".{out.name[:100]}.partial-", _first_existing(out.parent))
    try:
        ram_file, ram_kind = user_ram, "file"
        if args.ram == "zero":
            ram_kind = "zero"
        elif user_ram is None:
            seed = 0 if args.ram == "random" else int(args.ram)
            ram_file = make_ram_file(staging / "guest-ram.img", args.mem_mb, seed=seed)
            ram_kind = "random" if args.ram == "random" else f"seed:{seed}"
        with reaper.temporary_directory("migconform-guest-") as scratch:
            extra = guest_extra_args(guest, scratch) + list(device_args)
            if args.dirty is not None:
                params = {**DIRTY_PARAMETERS, **params}
            arguments = mf.Arguments(machine=args.machine, devices=devices, mem_mb=args.mem_mb,
                                     device_args=device_args,
                                     device_set=args.devices if args.devices in user_sets else None,
                                     ram_backend="default" if ram_file is None else "file",
                                     guest=guest, ram=ram_kind,
                                     capabilities=caps, parameters=params, globals_=tuple(globals_),
                                     **sides.manifest_fields())
            if args.channels:
                m, what = _capture_channels(args, staging, found, found[version], arguments, ram_file, extra, scratch)
            else:
                m, what = _capture_single(args, staging, found[version], arguments, ram_file, extra)
        # the guest's initial RAM is worth keeping for comparison only if the guest never ran
        guest_ram = "guest-ram.img" if ram_file is not None and ram_file.parent == staging and guest == "paused" else None
        m = dataclasses.replace(m, guest_ram=guest_ram)
        (staging / MANIFEST).write_text(json.dumps(mf.to_json(m), indent=2) + "\n")
        out.parent.mkdir(parents=True, exist_ok=True)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # a result now, not a private temporary directory
        try:
            os.rename(staging, out)  # also replaces an empty directory
        except OSError as e:
            raise UsageError(f"{out}: {e.strerror}") from None
        reaper.forget_dir(staging)
    finally:
        reaper.remove_dir(staging)  # nothing left after a failure or an interruption
    print(f"{what} into {out}")
    return 0


def guest_extra_args(guest: str, scratch: Path) -> list[str]:
    """The guest's QEMU arguments, its boot image written into `scratch`. The dirtier keeps its
    IDE disk (captures made so replay with it)."""
    if guest == "dirtier":
        return dirtier_args(make_dirtier_disk(scratch / "dirtier-boot.img"))
    return list(guest_programs.guest(guest, scratch).args)


def _started(a: mf.Arguments, timeout: float):
    """The wait for a booting guest of ours (None: a paused guest, or the dirtier's fixed wait)."""
    if a.guest not in ("devices", "linux"):
        return None
    g = guest_programs.Guest(a.guest, (), True)
    return lambda q: guest_programs.wait_started(q, g, max(timeout, BOOT_SECONDS.get(a.guest, 0.0)))


# how long a guest may take to boot, beside --timeout (a Linux kernel under TCG on a busy machine)
BOOT_SECONDS = {"linux": 240.0}
DEFAULT_MEM_MB = 64


def _capture_single(args, staging: Path, binary, a: mf.Arguments, ram_file, extra) -> tuple[mf.Manifest, str]:
    t0 = time.monotonic()
    try:
        res = capture_stream(binary, staging / "main.bin", machine=a.machine, devices=a.devices, mem_mb=a.mem_mb,
                             ram_file=ram_file, capabilities={**a.capabilities, **a.source_capabilities},
                             parameters={**a.parameters, **a.source_parameters},
                             globals_=(*a.globals_, *a.source_globals), extra_args=extra,
                             timeout=args.timeout + BOOT_SECONDS.get(a.guest, 0.0), running=a.guest != "paused", stop_after=args.dirty, started=_started(a, args.timeout))
    except (QemuError, TimeoutError) as e:
        raise UsageError(f"capture from QEMU {binary.full_version}: {e}") from None
    m = mf.Manifest(main="main.bin", format=mf.FORMAT, source=mf.Side(binary.full_version, binary.version),
                    arguments=a, bytes_={"main.bin": res.size}, seconds=round(time.monotonic() - t0, 3),
                    final_ram_sha256={"source": res.source_ram, "destination": None} if res.source_ram else None)
    return m, f"captured {res.size} bytes from QEMU {binary.full_version} ({a.machine}, {a.device_set or a.devices}" \
              + (f", {len(a.device_args) // 2} device arguments of yours" if a.device_args else "") + ")"


def _capture_channels(args, staging: Path, found: dict, binary, a: mf.Arguments, ram_file, extra,
                      scratch: Path) -> tuple[mf.Manifest, str]:
    from conformance.qemu.tcp_migration import capture_channels

    dest = found.get(args.dest or binary.version)
    if dest is None:
        raise UsageError(f"destination QEMU {args.dest} not found")
    a = dataclasses.replace(a, capabilities={"multifd": True, **a.capabilities},
                            parameters={"multifd-channels": args.channels, **a.parameters})
    t0 = time.monotonic()
    dst_ram = make_ram_file(scratch / "destination-ram.img", a.mem_mb, content=b"") if ram_file else None
    try:
        cap = capture_channels(binary, dest, machine=a.machine, devices=a.devices, mem_mb=a.mem_mb,
                               ram_file=ram_file, dst_ram_file=dst_ram, capabilities=a.capabilities,
                               parameters=a.parameters, globals_=a.globals_, extra_args=extra,
                               running=a.guest != "paused", stop_after=args.dirty,
                               timeout=args.timeout + BOOT_SECONDS.get(a.guest, 0.0),
                               src_globals=a.source_globals, dst_globals=a.dest_globals,
                               src_capabilities=a.source_capabilities, dst_capabilities=a.dest_capabilities,
                               src_parameters=a.source_parameters, dst_parameters=a.dest_parameters,
                               started=_started(a, args.timeout), record_limit=args.record_limit << 20)
    except (QemuError, TimeoutError) as e:
        raise UsageError(f"capture QEMU {binary.full_version} -> {dest.full_version}: {e}") from None
    files = {"main.bin": cap.main, "return-path.bin": cap.return_path}
    files.update({f"multifd{i}.bin": data for i, data in sorted(cap.multifd.items())})
    files.update({f"other{i}.bin": data for i, data in enumerate(cap.other)})
    for name, data in files.items():
        (staging / name).write_bytes(data)
    channels = tuple(f"multifd{i}.bin" for i in sorted(cap.multifd))
    m = mf.Manifest(main="main.bin", channels=channels, format=mf.FORMAT,
                    source=mf.Side(binary.full_version, binary.version),
                    destination=mf.Side(dest.full_version, dest.version, cap.destination_status), arguments=a,
                    return_path="return-path.bin", other=tuple(f"other{i}.bin" for i in range(len(cap.other))),
                    channel_order=("main.bin", *channels),
                    final_ram_sha256={"source": cap.source_ram, "destination": cap.destination_ram}
                    if a.guest != "paused" else None,
                    bytes_={name: len(data) for name, data in files.items()}, seconds=round(time.monotonic() - t0, 3))
    return m, (f"captured main + {len(cap.multifd)} multifd channels from QEMU {binary.full_version} to "
               f"{dest.full_version} ({a.machine})")


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


def _channel_ids(names: tuple[str, ...]) -> list[int]:
    """multifdN.bin -> N (the schedule names channels so); else the position in the manifest."""
    ids = [int(x[1]) if (x := re.fullmatch(r"multifd(\d{1,4})\.bin", Path(n).name)) else i for i, n in enumerate(names)]
    return ids if len(set(ids)) == len(ids) else list(range(len(names)))


def _predict(main: Path, channels: list, version: str | None, machine: str, globals_, caps, params):
    """`check`'s verdict on the capture for the destination replay starts: its own judge
    (conformance.check.judge) with its defaults (None version: an unmodelled destination,
    judged as the newest modelled one without its tables)."""
    from conformance.check.judge import judge_path
    from conformance.rules.profile import configure

    target = configure(version, machine=machine, globals=dict(g.split("=", 1) for g in globals_ if "=" in g),
                       capabilities=caps, parameters=params) if version else None
    return judge_path(str(main), target, channels=[str(c) for c in channels])


def cmd_replay(args) -> int:
    """Replay, then compare the destination with the capture's own verdict and RAM."""
    from conformance.check.report import format_report
    from conformance.qemu import machine_types
    from conformance.qemu.tcp_migration import ram_digest_file, replay
    from conformance.rules.profile import PROFILES

    d = Path(args.capture)
    try:
        m = mf.load(d, device_sets=DEVICE_SETS)
        if m.arguments is None:
            raise mf.ManifestError(f"{d / MANIFEST}: no `arguments`: nothing says how to start a destination")
        main = mf.resolve(d, m.main)
        channels = dict(zip(_channel_ids(m.channels), (mf.resolve(d, c) for c in m.channels)))
        guest_ram = mf.resolve(d, m.guest_ram) if m.guest_ram else None
    except mf.ManifestError as e:
        raise UsageError(str(e)) from None
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
    binary, a = found[version], m.arguments
    try:
        extra_sides = one_sided.from_args(args)  # the destination's own, on top of the manifest's
    except ValueError as e:
        raise UsageError(str(e)) from None
    dst_caps, dst_params, dst_globals = a.destination_settings()
    dst_caps, dst_params = {**dst_caps, **extra_sides.dest_capabilities}, {**dst_params, **extra_sides.dest_parameters}
    dst_globals = (*dst_globals, *extra_sides.dest_globals)
    one_sided_dest = bool(a.dest_globals or a.dest_capabilities or a.dest_parameters or extra_sides)
    # what the model says first: the judge `check` uses (the built-in destination tables, the
    # value rules), for this destination as replay starts it (machine, its own settings)
    rep = _predict(main, list(channels.values()), version if version in VERSIONS else None, a.machine, dst_globals,
                   dst_caps, dst_params)
    result = {"destination": binary.full_version, "schedule": schedule.describe(), "model": rep.verdict,
              "model_rejects": rep.rejected, "violations": [x.as_json() for x in rep.violations]}
    try:
        applicable = a.machine in machine_types(binary)
    except QemuError:
        applicable = True  # let the destination itself say
    v = None
    if applicable:
        with reaper.temporary_directory("migconform-replay-") as scratch:
            dst_ram = make_ram_file(scratch / "ram.img", a.mem_mb, content=b"") if a.ram_backend == "file" else None
            extra = guest_extra_args(a.guest, scratch) + list(a.device_args)
            v = replay(binary, main, channels, machine=a.machine, devices=a.devices, mem_mb=a.mem_mb,
                       ram_file=dst_ram, capabilities=dst_caps, parameters=dst_params, globals_=dst_globals,
                       schedule=schedule, timeout=args.timeout, extra_args=extra)
    ram_equal = None
    if v is None or not v.started:
        why = f"QEMU {binary.full_version} has no machine type {a.machine}" if v is None else \
            f"the destination did not start: {v.reason}"
        outcome, agrees = f"not applicable: {why}", None
    else:
        if v.ram_sha256 is not None and (m.final_ram_sha256 or {}).get("source"):
            ram_equal = v.ram_sha256 == m.final_ram_sha256["source"]
        elif v.ram_sha256 is not None and guest_ram is not None:
            ram_equal = v.ram_sha256 == ram_digest_file(guest_ram)
        outcome = "completed" if v.completed else "hung" if v.hung else f"failed: {v.reason}"
        agrees = v.completed == (not rep.rejected) and ram_equal is not False
        if one_sided_dest and agrees is False and ram_equal is not False:
            # the checker judges the stream against a default destination: it does not model
            # settings given to the destination alone (yet), so no disagreement is claimed
            agrees = None
            outcome += " (model: not modelled, destination-only settings)"
        result["seconds"] = round(v.seconds, 2)
        result["error_lines"] = v.error_lines
    result.update(outcome=outcome, ram_equal=ram_equal, agrees=agrees)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_report(rep))
        verdict = "" if agrees is None else f" -> {'agrees' if agrees else 'DISAGREES'} with the model"
        print(f"  replay into QEMU {binary.full_version} ({schedule.describe()}): {outcome}"
              + ("" if ram_equal is None else f", guest RAM {'equals' if ram_equal else 'DIFFERS FROM'} the source's")
              + verdict)
    return 1 if agrees is False else 0
