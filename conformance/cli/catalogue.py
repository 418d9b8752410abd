"""`migconform catalogue`: every violation code, printed."""

from __future__ import annotations

import json

from conformance.cli import EXIT_OK


def add_catalogue_parser(sub) -> None:
    cat = sub.add_parser("catalogue", help="every violation code and the QEMU behaviour it mirrors")
    cat.add_argument("--json", action="store_true")
    cat.add_argument("--markdown", action="store_true")
    cat.set_defaults(func=cmd_catalogue)


def cmd_catalogue(args) -> int:
    from conformance.rules.catalogue import CATALOGUE, catalogue_markdown

    if args.json:
        print(json.dumps({c: {"meaning": e.meaning, "qemu": e.qemu} for c, e in CATALOGUE.items()}, indent=2))
    elif args.markdown:
        print(catalogue_markdown(), end="")
    else:
        for e in CATALOGUE.values():
            print(f"{e.code:<34} {e.meaning}")
    return EXIT_OK
