"""`migconform qemu list` and `migconform demo`: the QEMU binaries migconform finds, and the
built-in demo over them. `qemu_pairs` reads every command's `--qemu VERSION=PATH`."""

from __future__ import annotations

import json

from conformance.cli import EXIT_OK
from conformance.errors import UsageError


def qemu_pairs(items: list[str] | None, what: str = "--qemu") -> dict[str, str]:
    """The VERSION=PATH values of a repeatable option; UsageError for a malformed one."""
    from conformance.qemu import QemuNotFound, parse_pairs

    try:
        return parse_pairs(items or [], what=what)
    except QemuNotFound as e:
        raise UsageError(str(e)) from None


def add_qemu_parser(sub) -> None:
    q = sub.add_parser("qemu", help="QEMU binaries migconform can use")
    qs = q.add_subparsers(dest="qemu_command", required=True)
    ql = qs.add_parser("list", help="list discovered QEMU binaries")
    ql.add_argument("--qemu", action="append", metavar="VERSION=PATH")
    ql.add_argument("--json", action="store_true")
    ql.set_defaults(func=cmd_qemu_list)
    qd = qs.add_parser("dump-vmstate", help="write a QEMU's -dump-vmstate JSON for one machine type (the input of "
                       "vmstate-diff); an unpacked QEMU is started with its own modules")
    qd.add_argument("out", metavar="OUT", help="the JSON file to write ('-' for stdout)")
    qd.add_argument("--qemu", required=True, metavar="VERSION|VERSION=PATH|PATH",
                    help="which QEMU: a version migconform finds (qemu list), VERSION=PATH, or a binary's path")
    qd.add_argument("--machine", required=True, metavar="M", help="machine type (e.g. pc-q35-7.2; aliases as QEMU takes them)")
    qd.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS", help="give up on QEMU after this long (default 60)")
    qd.set_defaults(func=cmd_qemu_dump_vmstate)


def add_demo_parser(sub) -> None:
    m = sub.add_parser("demo", help="capture a stream from each installed QEMU and check it")
    m.add_argument("--qemu", action="append", metavar="VERSION=PATH")
    m.add_argument("--machine", default="pc-i440fx-7.2", help="a machine type every installed QEMU has")
    m.add_argument("--devices", default="virtio-net+virtio-blk")
    m.add_argument("--mem-mb", type=int, default=128)
    m.set_defaults(func=cmd_demo)


def cmd_qemu_list(args) -> int:
    from conformance.qemu import QemuNotFound, discover
    from conformance.versions import version_key

    pairs = qemu_pairs(args.qemu)
    try:
        found = discover(pairs)
    except QemuNotFound as e:
        raise UsageError(str(e)) from None
    if args.json:
        print(json.dumps({v: {"path": str(b.path), "full_version": b.full_version, "source": b.source} for v, b in found.items()}, indent=2))
    else:
        if not found:
            print("no QEMU found (run scripts/setup.sh, or pass --qemu VERSION=PATH)")
        for v, b in sorted(found.items(), key=lambda kv: version_key(kv[0])):
            print(f"QEMU {v:<5} {b.full_version:<10} {b.path}  ({b.source})")
    return EXIT_OK


def cmd_qemu_dump_vmstate(args) -> int:
    import sys
    import tempfile
    from pathlib import Path

    from conformance.qemu import QemuError, QemuNotFound, dump_vmstate, find_binary, machine_types

    try:
        binary = find_binary(args.qemu)
        known = machine_types(binary)
    except (QemuNotFound, QemuError) as e:
        raise UsageError(str(e)) from None
    if args.machine not in known:
        import difflib

        close = difflib.get_close_matches(args.machine, known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (see {binary.path} -machine help)"
        raise UsageError(f"--machine: QEMU {binary.full_version} has no machine type '{args.machine}'{hint}")
    if args.out == "-":
        with tempfile.TemporaryDirectory(prefix="migconform-dump-vmstate-") as d:
            out = dump_vmstate(binary, args.machine, Path(d) / "vmstate.json", timeout=args.timeout)
            sys.stdout.write(out.read_text())
        return EXIT_OK
    out = Path(args.out)
    if out.is_dir():
        raise UsageError(f"{out}: is a directory (give the JSON file to write)")
    if not out.parent.is_dir():
        raise UsageError(f"{out}: no directory {out.parent} to write it in")
    # beside the target, renamed into place: a failed or interrupted QEMU leaves no half file
    tmp = out.with_name(f".{out.name}.partial")
    try:
        dump_vmstate(binary, args.machine, tmp, timeout=args.timeout)
        tmp.replace(out)
    except OSError as e:
        raise UsageError(f"{out}: {e.strerror or e}") from None
    finally:
        tmp.unlink(missing_ok=True)
    print(f"QEMU {binary.full_version} ({binary.path}), machine {args.machine}: -dump-vmstate written to {out}",
          file=sys.stderr)
    return EXIT_OK


def cmd_demo(args) -> int:
    from conformance.check.report import format_report
    from conformance.tools.demo import run_demo

    return run_demo(qemu_pairs(args.qemu), machine=args.machine, devices=args.devices, mem_mb=args.mem_mb,
                    report=format_report)
