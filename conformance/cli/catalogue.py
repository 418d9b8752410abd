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
