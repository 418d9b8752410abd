"""`migconform dump`: argparse and printing; the decoding is check/dump.py's."""

from __future__ import annotations

import json

from conformance.cli import EXIT_OK, EXIT_USAGE


def add_dump_parser(sub) -> None:
    d = sub.add_parser("dump", help="print the decoded structure of a stream")
    d.add_argument("path")
    d.add_argument("--json", action="store_true")
    d.add_argument("--strict", action="store_true", help="exit 2 when the stream cannot be decoded to its end")
    d.add_argument("--fields", action="store_true", help="decode device sections field by field from the stream's VMDESCRIPTION")
    d.add_argument("--send-src-downtime-id", type=int, default=None, metavar="ID")
    d.set_defaults(func=cmd_dump)


def cmd_dump(args) -> int:
    from conformance.check.destination import command_set
    from conformance.check.dump import dump_stream, format_dump
    from conformance.check.inputs import open_stream
    from conformance.check.pipeline import trailer_body_sizer

    src, name = open_stream(args.path)
    d = dump_stream(src, commands=command_set(args.send_src_downtime_id), name=name,
                    body_sizer=trailer_body_sizer(args.path), fields=args.fields)
    if args.json:
        print(json.dumps(d, indent=2, default=str))
    else:
        print(format_dump(d))
    return EXIT_USAGE if d["error"] and args.strict else EXIT_OK
