"""`migconform matrix` on the command line: options, checks of the set-up, and the reports."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Iterable

from conformance.qemu import QemuBinary, QemuError, QemuNotFound, discover, parse_pairs
from conformance.rules import compat
from conformance.versions import version_key
from conformance.tools import devsets
from conformance.tools.matrix import report
from conformance.tools.matrix.grid import (
    CAPABILITY_SETS,
    DEFAULT_CAPS,
    DEFAULT_VERSIONS,
    MATRIX_DEVICE_SETS,
    MatrixError,
    build_grid,
)
from conformance.tools.matrix.run import EXIT_USAGE, run_matrix
from conformance.tools.sides import ONE_SIDED_SETS, SidesError, add_options, axis_text, from_args

# how long a running guest may take to boot: measured 10-15 s for the Linux guest under TCG,
# 44 s on 10.0 with an AHCI CD-ROM (SeaBIOS), on a shared 2-core machine; room for a loaded one
BOOT_TIMEOUT = 120.0


def split_values(values: Iterable[Iterable[str]] | None) -> list[str]:
    """The values of a repeatable `nargs="+"` option, each also split at commas."""
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
    m.add_argument("--devices-file", metavar="FILE",
                   help="named device sets of your own, TOML or JSON (see conformance/tools/devsets.py); name them "
                        "in --devices")
    m.add_argument("--device", dest="device", action="append", default=[], metavar="DRIVER[,PROP=VALUE]",
                   help="a -device of your own in every cell, after the set's (repeatable, QEMU syntax)")
    m.add_argument("--caps", action="append", nargs="+", metavar="SET",
                   help=f"capability sets: {caps_help}, or capabilities joined with '+' "
                        f"(default: {', '.join(DEFAULT_CAPS)})")
    m.add_argument("--global", dest="globals_", action="append", default=[], metavar="DRIVER.PROP=VALUE",
                   help="a -global for both ends of every cell (also given to the model)")
    m.add_argument("--guests", action="append", nargs="+", metavar="GUEST",
                   help="guests, an axis: paused (default), dirtier, devices (boot programs of ours, running), linux (Debian's kernel and our initramfs, at least 128 MiB)")
    m.add_argument("--accels", action="append", nargs="+", metavar="ACCEL",
                   help="accelerators, an axis: kvm, tcg (default: kvm where a guest really runs under it, else tcg; "
                        "QEMU 7.2 under TCG can lose a running guest's writes: such cells are labelled)")
    m.add_argument("--modes", action="append", nargs="+", metavar="MODE",
                   help="how a running guest is migrated, an axis: live (precopy while it runs, default), stopped "
                        "(booted, then stopped before the migration), postcopy (postcopy-ram on both sides, switched "
                        "to postcopy while the guest runs), nonconverging (downtime-limit 1 ms at 1 MiB/s: the source "
                        "is stopped after 4 s, then completes). postcopy, nonconverging and any capability set with "
                        "multifd migrate straight into the destination over loopback TCP")
    m.add_argument("--one-sided", action="append", nargs="+", metavar="SET",
                   help="one-sided settings, an axis: none (default), a named set ("
                   + ", ".join(ONE_SIDED_SETS) + ") or KIND:SETTING joined by '+' (KIND: src-global, "
                   "dst-global, src-cap, dst-cap, src-param, dst-param)")
    add_options(m)
    m.add_argument("--json", metavar="PATH", help="write the results as JSON ('-': to stdout instead of the grid)")
    m.add_argument("--html", metavar="PATH", help="write a self-contained HTML report")
    m.add_argument("--workers", type=int, default=2, help="cells run in parallel (default 2)")
    m.add_argument("--mem-mb", type=int, default=64, help="guest RAM (default 64)")
    m.add_argument("--timeout", type=float, default=30.0,
                   help="seconds each wait of a cell may take: a migration, a load, the resumed guest's heartbeat "
                        "(default 30); a load that does not end is 'hung'")
    m.add_argument("--boot-timeout", type=float, default=BOOT_TIMEOUT, metavar="SECONDS",
                   help=f"seconds a running guest may take to boot (default {BOOT_TIMEOUT:g}: the Linux guest under "
                        "TCG takes 10-45 s here, SeaBIOS probing an AHCI CD-ROM on 10.0 most of it); one that does "
                        "not is the cell's outcome 'no-boot', with the last line it printed")
    m.add_argument("--keep", metavar="DIR", help="keep the captured streams in DIR (captures already there for the "
                                                  "same binary, memory size and -global are reused)")
    m.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    m.set_defaults(func=cmd_matrix)


def _binaries(items: list[str] | None) -> dict[str, QemuBinary]:
    try:
        given = parse_pairs(items or [], what="--qemu", bare=True)
        wanted = list(given)
        found = discover({v: p for v, p in given.items() if p is not None})
    except QemuNotFound as e:
        raise MatrixError(str(e)) from None
    if not wanted:
        wanted = [v for v in DEFAULT_VERSIONS if v in found] or sorted(found, key=version_key)
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
    try:
        if args.workers < 1:
            raise MatrixError("--workers must be at least 1")
        if args.mem_mb < 16:
            raise MatrixError("--mem-mb must be at least 16")
        if args.timeout <= 0:
            raise MatrixError("--timeout must be positive")
        if args.boot_timeout <= 0:
            raise MatrixError("--boot-timeout must be positive")
        try:
            for g in args.globals_:
                compat.parse_globals([g])
        except ValueError as e:
            raise MatrixError(str(e)) from None
        binaries = _binaries(args.qemu)
        try:
            fixed = axis_text(from_args(args))  # the --source-*/--dest-* options: in every cell
        except SidesError as e:
            raise MatrixError(str(e)) from None
        sided = split_values(args.one_sided) or ["none"]
        if fixed:
            sided = [fixed if o == "none" else f"{ONE_SIDED_SETS.get(o, o)}+{fixed}" for o in sided]
        try:
            user_sets = devsets.load_sets(args.devices_file, MATRIX_DEVICE_SETS) if args.devices_file else {}
            extra_devices = devsets.device_values(args.device)
        except devsets.DeviceSetError as e:
            raise MatrixError(str(e)) from None
        grid = build_grid(list(binaries), split_values(args.machines) or None, split_values(args.devices) or None,
                          split_values(args.caps) or None, split_values(args.guests) or None, sided, user_sets,
                          split_values(args.accels) or None, split_values(args.modes) or None)
        if not args.accels:  # the default: kvm where it runs guests (a probe), else tcg
            from conformance.qemu.accel import PROBE_SECONDS, default_accel
            if not args.no_progress:
                print(f"matrix: does KVM run guests here? (a probe guest, at most {PROBE_SECONDS:g} s per QEMU)",
                      file=sys.stderr, flush=True)
            chosen = default_accel(binaries.values())
            if not args.no_progress:
                print(f"matrix: accelerator {chosen}" + ("" if chosen == "kvm" else
                      " (KVM did not wake a halted guest with its timer here; --accels kvm to use it anyway)"),
                      file=sys.stderr, flush=True)
            grid = dataclasses.replace(grid, accels=(chosen,))
        for path in (args.json, args.html):
            if path and path != "-":
                parent = Path(path).expanduser().resolve().parent
                if not parent.is_dir():
                    raise MatrixError(f"{path}: no such directory {parent}")
        if args.keep:
            Path(args.keep).mkdir(parents=True, exist_ok=True)
        cells = grid.cells()
        bar = report.ProgressBar(len(cells), enabled=not args.no_progress)
        try:
            result = run_matrix(binaries, grid, workdir=args.keep, workers=args.workers, mem_mb=args.mem_mb,
                                timeout=args.timeout, boot_timeout=args.boot_timeout, globals_=args.globals_,
                                progress=bar.update,
                                doing=bar.doing, tick=bar.tick,
                                user_sets=user_sets, extra_devices=extra_devices)
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
