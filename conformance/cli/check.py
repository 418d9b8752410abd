"""`migconform check`: argparse and printing; the work is in check/."""

from __future__ import annotations

import json
import sys

from conformance.cli import EXIT_OK, EXIT_VIOLATIONS
from conformance.cli.profile_options import add_options as add_profile_options
from wireformat.budgets import BUDGETS


def add_check_parser(sub) -> None:
    c = sub.add_parser("check", help="validate a stream (exit 0 conforms, 1 violations, 2 error)")
    c.add_argument("path", help="stream file (.gz/.xz/.zst read transparently), - for stdin, tcp:HOST:PORT to "
                   "receive a live migration (precopy, no return path) as a destination would, or a capture directory")
    c.add_argument("--channel", action="append", metavar="FILE",
                   help="a multifd channel of the same migration (repeatable, any order: the id is in each channel)")
    c.add_argument("--dest-channels", type=int, metavar="N", help="the destination's multifd-channels")
    c.add_argument("--ram-model", action="store_true",
                   help="also replay the multifd capture through the reference RAM model (page races, stale pages; "
                   "state of ~23 bytes per guest page: ~25 MB for a 4 GiB guest)")
    c.add_argument("--json", action="store_true", help="machine-readable report")
    c.add_argument("--vmstate", metavar="DUMP.json", help="the destination's -dump-vmstate: its VMSD list, versions and declarations "
                   "refine the target version's built-in tables (a device VMSD it lacks: unknown section)")
    c.add_argument("--reference", metavar="REF", help="a stream the destination binary saved with the same machine and "
                   "devices: the sections it registers (unknown idstr/instance, versions too new) and its RAM blocks, "
                   "refining the built-in tables")
    c.add_argument("--no-builtin-tables", action="store_true",
                   help="do not judge section names, versions and device layouts by the target version's own "
                   "-dump-vmstate (shipped): only by --vmstate / --reference")
    c.add_argument("--recovery", metavar="OLD_MAIN", nargs="?", const="", default=None,
                   help="PATH is the new main channel of a postcopy recovery (no header, destination in "
                   "postcopy-recover); OLD_MAIN is the interrupted main channel it resumes")
    c.add_argument("--return-path", metavar="FILE", help="the return path of the same migration (destination to "
                   "source), judged as the source reads it (--source-version)")
    add_profile_options(c)
    c.add_argument("--send-src-downtime-id", type=int, default=None, metavar="ID",
                   help="decode the proposed (never merged) MIG_CMD_SEND_SRC_DOWNTIME under this command id")
    c.add_argument("--timeout", type=float, default=BUDGETS.wait_seconds, metavar="SECONDS",
                   help=f"wait this long for a tcp: source to connect, a FIFO's writer or stdin's first bytes "
                   f"(default {BUDGETS.wait_seconds:g}); what is waited for is said on stderr")
    c.set_defaults(func=cmd_check)


def _progress(enabled: bool):
    """check's progress: MiB read of a lone main stream."""
    from conformance.progress import Progress

    bar = Progress("check", unit=" MiB", enabled=enabled)

    def tick(offset: int, total: int | None) -> None:
        bar.update(offset >> 20, None if total is None else total >> 20)

    tick.done = bar.close
    return tick


def cmd_check(args) -> int:
    from conformance.check.capture_dir import stream_files
    from conformance.check.destination import command_set
    from conformance.check.judge import judge_path
    from conformance.check.report import format_report
    from conformance.check.inputs import Waiting
    from conformance.cli.profile_options import from_args

    Waiting.timeout = args.timeout
    Waiting.announce = lambda m: print(f"migconform: {m}", file=sys.stderr, flush=True)
    main, channels = stream_files(args.path, args.channel or [])
    profiles = from_args(args, main)
    prog = _progress(not args.json and not channels)
    try:
        rep = judge_path(args.path, profiles.dest, channels=args.channel or [], source=profiles.source,
                         vmstate=args.vmstate, reference=args.reference, builtin=not args.no_builtin_tables,
                         commands=command_set(args.send_src_downtime_id), recovery=args.recovery,
                         destination_channels=args.dest_channels, ram_model=args.ram_model, progress=prog,
                         return_path=args.return_path)
    finally:
        prog.done()
    if args.json:
        print(json.dumps(rep.as_json(), indent=2))
    else:
        print(format_report(rep))
        if "multifd" in rep.stats:
            mf = rep.stats["multifd"]
            chans = ", ".join(f"{k}: {v['packets']} packets, {v['syncs']} SYNC" for k, v in sorted(mf["channels"].items()))
            print(f"  multifd ({mf['sync_mode']} sync, {mf['sync_points']} sync points): {chans}")
    return EXIT_VIOLATIONS if rep.violations else EXIT_OK
