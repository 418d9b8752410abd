"""`migconform dump`: argparse and printing; the decoding is check/dump.py's."""

from __future__ import annotations

import json
import os
import sys

from conformance.cli import EXIT_OK, EXIT_VIOLATIONS
from wireformat.budgets import BUDGETS
from wireformat.constants import QEMU_VM_FILE_MAGIC


def add_dump_parser(sub) -> None:
    d = sub.add_parser("dump", help="print the decoded structure of a stream")
    d.add_argument("path", help="a main stream or multifd channel file (.gz/.xz/.zst/.bz2 read transparently), "
                   "- for stdin, tcp:HOST:PORT, or a capture directory (every channel)")
    d.add_argument("--json", action="store_true")
    d.add_argument("--strict", action="store_true", help="(the default now: exit 1 when a stream cannot be decoded to its end)")
    d.add_argument("--fields", action="store_true", help="decode device sections field by field from the stream's VMDESCRIPTION")
    d.add_argument("--send-src-downtime-id", type=int, default=None, metavar="ID")
    d.add_argument("--timeout", type=float, default=BUDGETS.wait_seconds, metavar="SECONDS",
                   help=f"wait this long for a tcp: source, a FIFO's writer or stdin's first bytes (default {BUDGETS.wait_seconds:g})")
    d.set_defaults(func=cmd_dump)


def cmd_dump(args) -> int:
    """Exit 0 when every stream decodes to its end, 1 when one does not (not a migration
    stream, cut short, framing lost), 2 when an input cannot be read."""
    from conformance.check.capture_dir import capture_files
    from conformance.check.destination import command_set
    from conformance.check.dump import MULTIFD_HEAD, dump_channel, dump_stream, format_channel, format_dump
    from conformance.check.inputs import Prepended, Waiting, open_stream
    from conformance.check.pipeline import trailer_body_sizer

    Waiting.timeout = args.timeout
    Waiting.announce = lambda m: print(f"migconform: {m}", file=sys.stderr, flush=True)
    if os.path.isdir(args.path):
        main, channels = capture_files(args.path)
        paths = [str(main), *map(str, channels)]
    else:
        paths = [args.path]
    dumps = []
    for path in paths:
        src, name = open_stream(path)
        head = b""
        while len(head) < 4:  # a pipe may give less per read
            more = src.read(4 - len(head))
            if not more:
                break
            head += more
        src = Prepended(src, head)
        if head == MULTIFD_HEAD:
            dumps.append(dump_channel(src, name=name))
        else:
            d = dump_stream(src, commands=command_set(args.send_src_downtime_id), name=name,
                            body_sizer=trailer_body_sizer(path), fields=args.fields)
            h = d["header"]
            if h is not None and h["magic"] != f"{QEMU_VM_FILE_MAGIC:#010x}" and not d["error"]:
                d["error"] = f"not a migration stream (magic {h['magic']}, QEMU writes {QEMU_VM_FILE_MAGIC:#010x})"
            dumps.append(d)
    if args.json:
        print(json.dumps(dumps[0] if len(dumps) == 1 else dumps, indent=2, default=str))
    else:
        print("\n\n".join(format_channel(d) if d.get("kind") == "multifd channel" else format_dump(d) for d in dumps))
    return EXIT_VIOLATIONS if any(d["error"] for d in dumps) else EXIT_OK
