"""The `migconform` command line.

Exit codes: 0 the stream conforms, 1 it has violations, 2 usage or I/O error.
Errors are one line on stderr; no tracebacks.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

from wireformat.commands import RELEASED, CommandSet

from conformance.check.pipeline import Report, StreamReadError, check_stream
from conformance.check.dump import dump_stream, format_dump
from conformance.check.inputs import InputError, open_stream
from conformance.rules.profile import PROFILES, NEWEST, UnknownTarget, profile

EXIT_OK, EXIT_VIOLATIONS, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    pass


def _commands(args) -> CommandSet:
    if getattr(args, "send_src_downtime_id", None) is not None:
        return CommandSet.with_send_src_downtime(args.send_src_downtime_id)
    return RELEASED


def _tables(dump_path: str | None, reference: str | None, target: str | None = None, builtin: bool = True):
    """The destination's tables from its -dump-vmstate and/or a stream it saved itself;
    else what every destination of the target version has (shipped with migconform)."""
    if not dump_path and not reference:
        if not builtin or target is None:
            return None
        from conformance.rules.tables import builtin_tables

        return builtin_tables(target)
    from wireformat import vmstate

    from conformance.rules.tables import DestinationTables

    dump = None
    if dump_path:
        try:
            text = Path(dump_path).read_text()
        except OSError as e:
            raise UsageError(f"{dump_path}: {e.strerror}") from None
        try:
            dump = vmstate.parse_dump_vmstate(text)
        except ValueError as e:
            raise UsageError(f"{dump_path}: not a -dump-vmstate JSON: {str(e).splitlines()[0]}") from None
    if reference:
        src, _ = open_stream(reference)
        with src:
            return DestinationTables.from_reference_stream(src, dump)
    return DestinationTables(dump=dump)


def _body_checker():
    from conformance.check.pipeline import vmstate_body_check

    return vmstate_body_check


def _body_sizer(path: str):
    from conformance.check.pipeline import trailer_body_sizer

    return trailer_body_sizer(path)


class _Progress:
    """Progress on stderr for long checks, only when stderr is a terminal."""

    def __init__(self, enabled: bool, total: int | None):
        self.enabled, self.total = enabled, total

    def __call__(self, offset: int) -> None:
        if not self.enabled:
            return
        if self.total:
            sys.stderr.write(f"\r  {offset / self.total:6.1%}  {offset >> 20} MiB")
        else:
            sys.stderr.write(f"\r  {offset >> 20} MiB")
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * 40 + "\r")


def format_report(rep: Report) -> str:
    s = rep.stats
    conf = s.get("configuration") or {}
    lines = []
    head = f"{rep.source}: {rep.verdict.upper()} as a QEMU {rep.target} destination"
    lines.append(head)
    pages = sum(b.get("page", 0) for b in s.get("ram_blocks", {}).values())
    zeros = sum(b.get("zero", 0) for b in s.get("ram_blocks", {}).values())
    lines.append(f"  {s.get('bytes', 0)} bytes, machine {conf.get('machine_type', '?')}, {s.get('sections', 0)} sections, "
                 f"{pages} pages + {zeros} zero pages, {rep.seconds:.2f} s")
    if rep.violations:
        lines.append("")
        for v in rep.violations:
            lines.append("  " + v.one_line())
        if s.get("violations_dropped"):
            lines.append(f"  … {s['violations_dropped']} more violations not listed")
    return "\n".join(lines)


def _capture_files(path: str, channels: list[str]) -> tuple[str, list[str]]:
    """(main, channels) of a capture directory (manifest.json, else main* and multifd* files)."""
    if not os.path.isdir(path):
        return path, channels
    d = Path(path)
    manifest = d / "manifest.json"
    if manifest.is_file():
        try:
            m = json.loads(manifest.read_text())
            return str(d / m["main"]), [str(d / c) for c in m.get("channels", [])] + channels
        except (ValueError, KeyError, TypeError) as e:
            raise UsageError(f"{manifest}: not a capture manifest: {e}") from None
    mains = sorted(d.glob("main*"))
    if len(mains) != 1:
        raise UsageError(f"{path}: a capture directory needs manifest.json or exactly one main* file")
    return str(mains[0]), [str(p) for p in sorted(d.glob("multifd*"))] + channels


def cmd_check(args) -> int:
    try:
        target = profile(args.target)
    except UnknownTarget as e:
        raise UsageError(str(e)) from None
    args.path, channel_paths = _capture_files(args.path, args.channel or [])
    if channel_paths:
        return _check_capture(args, target, channel_paths)
    tables = _tables(args.vmstate, args.reference, target.version, not args.no_builtin_tables)
    previous = open_stream(args.recovery)[0] if args.recovery else None
    src, name = open_stream(args.path)
    total = os.path.getsize(args.path) if os.path.isfile(args.path) and not name.endswith(")") else None
    prog = _Progress(sys.stderr.isatty() and not args.json, total)
    try:
        rep = check_stream(src, name=name, target=target, commands=_commands(args), tables=tables,
                           body_checker=_body_checker(), progress=prog, machine=args.machine,
                           body_sizer=_body_sizer(args.path), recovery=args.recovery is not None,
                           previous=previous)
    finally:
        prog.done()
    if args.json:
        print(json.dumps(rep.as_json(), indent=2))
    else:
        print(format_report(rep))
    return EXIT_VIOLATIONS if rep.violations else EXIT_OK


def _check_capture(args, target, channel_paths: list[str]) -> int:
    from conformance.check.pipeline import check_capture

    src, name = open_stream(args.path)
    channels = [(os.path.basename(p), open_stream(p)[0]) for p in channel_paths]
    rep = check_capture(src, channels, name=name, target=target, destination_channels=args.dest_channels,
                        commands=_commands(args),
                        tables=_tables(args.vmstate, args.reference, target.version, not args.no_builtin_tables),
                        body_checker=_body_checker(), machine=args.machine, body_sizer=_body_sizer(args.path))
    if args.ram_model:
        from conformance.check.pipeline import ram_model_check

        found, stats = ram_model_check(open_stream(args.path)[0], [open_stream(p)[0] for p in sorted(
            channel_paths, key=lambda p: rep.stats["multifd"]["file_ids"].get(os.path.basename(p), 0))],
            mode=rep.stats["multifd"]["sync_mode"])
        rep.violations = rep.violations + found
        rep.stats["ram_model"] = stats
    if args.json:
        print(json.dumps(rep.as_json(), indent=2))
    else:
        print(format_report(rep))
        mf = rep.stats["multifd"]
        chans = ", ".join(f"{k}: {v['packets']} packets, {v['syncs']} SYNC" for k, v in sorted(mf["channels"].items()))
        print(f"  multifd ({mf['sync_mode']} sync, {mf['sync_points']} sync points): {chans}")
    return EXIT_VIOLATIONS if rep.violations else EXIT_OK


def cmd_dump(args) -> int:
    src, name = open_stream(args.path)
    d = dump_stream(src, commands=_commands(args), name=name, body_sizer=_body_sizer(args.path), fields=args.fields)
    if args.json:
        print(json.dumps(d, indent=2, default=str))
    else:
        print(format_dump(d))
    return EXIT_USAGE if d["error"] and args.strict else EXIT_OK


def cmd_qemu_list(args) -> int:
    from conformance.qemu import discover, QemuNotFound

    try:
        found = discover(_pairs(args.qemu))
    except QemuNotFound as e:
        raise UsageError(str(e)) from None
    if args.json:
        print(json.dumps({v: {"path": str(b.path), "full_version": b.full_version, "source": b.source} for v, b in found.items()}, indent=2))
    else:
        if not found:
            print("no QEMU found (run scripts/setup.sh, or pass --qemu VERSION=PATH)")
        for v, b in sorted(found.items(), key=lambda kv: tuple(int(x) for x in kv[0].split("."))):
            print(f"QEMU {v:<5} {b.full_version:<10} {b.path}  ({b.source})")
    return EXIT_OK


def _pairs(items) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise UsageError(f"--qemu takes VERSION=PATH, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def cmd_demo(args) -> int:
    from conformance.tools.demo import run_demo

    return run_demo(_pairs(args.qemu), machine=args.machine, devices=args.devices, mem_mb=args.mem_mb,
                    body_checker=_body_checker(), body_sizer=_body_sizer, report=format_report)


def cmd_catalogue(args) -> int:
    from conformance.rules.catalogue import CATALOGUE, as_json, catalogue_markdown, modelled_versions

    if args.json:
        print(json.dumps(as_json(), indent=2))
    elif args.markdown:
        print(catalogue_markdown(), end="")
    else:
        versions = modelled_versions()
        print(f"{'code':<34} " + " ".join(f"{v:<11}" for v in versions) + " meaning")
        for e in CATALOGUE.values():
            print(f"{e.code:<34} " + " ".join(f"{e.severity_on(v).value:<11}" for v in versions) + f" {e.meaning}")
    return EXIT_OK


LAZY_COMMANDS = (
    (("capture", "replay"), "conformance.tools.capture", "add_capture_parser", "record a real source's migration / replay it"),
    (("matrix",), "conformance.tools.matrix", "add_matrix_parser", "real migrations over a version x machine-type grid"),
    (("vmstate-diff",), "conformance.tools.vmstate_diff", "add_vmstate_diff_parser", "compare two binaries' -dump-vmstate"),
    (("capdiff",), "conformance.tools.capdiff", "add_capdiff_parser", "capability rules: the model against real QEMU"),
    (("downtime",), "conformance.rules.downtime", "add_downtime_parser", "analyse QEMU 10.0 vmstate_downtime_* traces"),
)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="migconform", description="Conformance checks for QEMU live-migration streams.")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("check", help="validate a stream (exit 0 conforms, 1 violations, 2 error)")
    c.add_argument("path", help="stream file (.gz/.xz/.zst read transparently), - for stdin, tcp:HOST:PORT to "
                   "receive a live migration (precopy, no return path) as a destination would, or a capture directory")
    c.add_argument("--channel", action="append", metavar="FILE",
                   help="a multifd channel of the same migration (repeatable, any order: the id is in each channel)")
    c.add_argument("--dest-channels", type=int, metavar="N", help="the destination's multifd-channels")
    c.add_argument("--ram-model", action="store_true",
                   help="also replay the multifd capture through the reference RAM model (page races, stale pages; "
                   "memory grows with the guest's RAM size)")
    c.add_argument("--json", action="store_true", help="machine-readable report")
    c.add_argument("--target", default=None, help=f"judge as this QEMU destination version ({', '.join(PROFILES)}; default {NEWEST})")
    c.add_argument("--vmstate", metavar="DUMP.json", help="the destination's -dump-vmstate: VMSD versions and minimum versions")
    c.add_argument("--reference", metavar="REF", help="a stream the destination binary saved with the same machine and "
                   "devices: the sections it registers (unknown idstr/instance, versions too new)")
    c.add_argument("--no-builtin-tables", action="store_true",
                   help="do not judge section names and versions by the target version's own -dump-vmstate (shipped)")
    c.add_argument("--machine", metavar="TYPE", help="the destination's machine type (compared as QEMU does)")
    c.add_argument("--recovery", metavar="OLD_MAIN", nargs="?", const="", default=None,
                   help="PATH is the new main channel of a postcopy recovery (no header, destination in "
                   "postcopy-recover); OLD_MAIN is the interrupted main channel it resumes")
    c.add_argument("--send-src-downtime-id", type=int, default=None, metavar="ID",
                   help="decode the proposed (never merged) MIG_CMD_SEND_SRC_DOWNTIME under this command id")
    c.set_defaults(func=cmd_check)

    d = sub.add_parser("dump", help="print the decoded structure of a stream")
    d.add_argument("path")
    d.add_argument("--json", action="store_true")
    d.add_argument("--strict", action="store_true", help="exit 2 when the stream cannot be decoded to its end")
    d.add_argument("--fields", action="store_true", help="decode device sections field by field from the stream's VMDESCRIPTION")
    d.add_argument("--send-src-downtime-id", type=int, default=None, metavar="ID")
    d.set_defaults(func=cmd_dump)

    cat = sub.add_parser("catalogue", help="every violation code and the QEMU behaviour it mirrors")
    cat.add_argument("--json", action="store_true")
    cat.add_argument("--markdown", action="store_true")
    cat.set_defaults(func=cmd_catalogue)

    q = sub.add_parser("qemu", help="QEMU binaries migconform can use")
    qs = q.add_subparsers(dest="qemu_command", required=True)
    ql = qs.add_parser("list", help="list discovered QEMU binaries")
    ql.add_argument("--qemu", action="append", metavar="VERSION=PATH")
    ql.add_argument("--json", action="store_true")
    ql.set_defaults(func=cmd_qemu_list)

    # Commands whose modules pull in the QEMU adapter (asyncio, QMP) and more: imported only
    # when used, so that `check` on a large stream does not pay for them at start-up.
    for names, module, adder, summary in LAZY_COMMANDS:
        if command is None or command in names:
            getattr(importlib.import_module(module), adder)(sub)
        else:
            for name in names:
                sub.add_parser(name, help=summary, add_help=False)

    m = sub.add_parser("demo", help="capture a stream from each installed QEMU and check it")
    m.add_argument("--qemu", action="append", metavar="VERSION=PATH")
    m.add_argument("--machine", default="pc-i440fx-7.2", help="a machine type every installed QEMU has")
    m.add_argument("--devices", default="virtio-net+virtio-blk")
    m.add_argument("--mem-mb", type=int, default=128)
    m.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (UsageError, InputError, StreamReadError) as e:
        print(f"migconform: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        return EXIT_OK
    except KeyboardInterrupt:
        print("migconform: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug of ours: still one line, the traceback on request
        if os.environ.get("MIGCONFORM_DEBUG"):
            raise
        print(f"migconform: internal error: {type(e).__name__}: {e} (set MIGCONFORM_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
