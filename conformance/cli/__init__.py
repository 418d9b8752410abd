"""The `migconform` command line: argparse and printing; the work is done in check/, tools/
and qemu/.

Exit codes: 0 the stream conforms, 1 it has violations, 2 usage or I/O error.
Errors are one line on stderr; no tracebacks.
"""

from __future__ import annotations

from conformance.cli import signals as _signals

if _signals.started_as_command():  # before the imports below: a Ctrl-C during them is one line too
    _signals.install()

import argparse  # noqa: E402
import importlib
import os
import sys
import threading

from conformance.errors import UsageError

EXIT_OK, EXIT_VIOLATIONS, EXIT_USAGE = 0, 1, 2

__all__ = ["EXIT_OK", "EXIT_USAGE", "EXIT_VIOLATIONS", "COMMANDS", "UsageError", "build_parser", "main"]

# Every command, in the order `migconform --help` lists them: (module, function adding its
# parser, {name: help}). A module is imported only for the command that runs (a parser stub
# with the same help stands in for the others), so that `--help` and `check` on a large
# stream do not pay for the QEMU adapter (asyncio, QMP) or the tools; the help here must
# be the parser's own (tests/test_cli.py compares them).
COMMANDS: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("conformance.cli.check", "add_check_parser",
     {"check": "validate a stream (exit 0 conforms, 1 violations, 2 error)"}),
    ("conformance.cli.dump", "add_dump_parser", {"dump": "print the decoded structure of a stream"}),
    ("conformance.cli.catalogue", "add_catalogue_parser",
     {"catalogue": "every violation code and the QEMU behaviour it mirrors"}),
    ("conformance.cli.qemu", "add_qemu_parser", {"qemu": "QEMU binaries migconform can use"}),
    ("conformance.cli.capture", "add_capture_parser",
     {"capture": "record a real QEMU source's migration stream into a capture directory",
      "replay": "play a capture directory into a real destination, one connection per channel"}),
    ("conformance.tools.matrix", "add_matrix_parser",
     {"matrix": "real migrations over a version x machine-type grid, compared with the model and the checker"}),
    ("conformance.tools.vmstate_diff", "add_vmstate_diff_parser",
     {"vmstate-diff": "compare two binaries' -dump-vmstate for one machine type "
                      "(exit 0 no breaking difference, 1 breaking, 2 error)"}),
    ("conformance.tools.capdiff", "add_capdiff_parser",
     {"capdiff": "compare the compat model's capability/parameter rules with real QEMU binaries "
                 "(exit 0 agree, 1 disagreement, 2 error)"}),
    ("conformance.tools.downtime", "add_downtime_parser",
     {"downtime": "analyse QEMU 10.0 vmstate_downtime_* trace logs of a migration "
                  "(exit 0, 2 on unreadable/foreign files)"}),
    ("conformance.cli.fuzz", "add_fuzz_parser",
     {"fuzz": "structure-aware fuzzing of real QEMU destinations and the reference loader"}),
    ("conformance.cli.qemu", "add_demo_parser", {"demo": "capture a stream from each installed QEMU and check it"}),
)


def suggest(word: str, choices, *, what: str = "") -> str:
    """" (did you mean 'X'?)" for the choice closest to a mistyped `word`, or ""."""
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class _Parser(argparse.ArgumentParser):
    """argparse with a suggestion for a mistyped option or choice (3.11's argparse has none).
    Subparsers are of this class too (add_subparsers takes the parser's own class)."""

    deepest: "_Parser | None" = None  # the innermost parser that parsed: whose options were meant

    def parse_known_args(self, args=None, namespace=None):
        _Parser.deepest = self
        return super().parse_known_args(args, namespace)

    def error(self, message: str):
        import re

        m = re.match(r"unrecognized arguments: (.*)", message)
        if m:
            parser = _Parser.deepest or self
            options = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
            words = m.group(1).split()
            hints = {w: suggest(w, options) for w in (x.split("=", 1)[0] for x in words if x.startswith("--"))}
            hints = {w: h for w, h in hints.items() if h}
            if len(hints) == 1 and len(words) == 1:
                message += next(iter(hints.values()))
            elif hints:
                message += " (" + "; ".join(f"{w}: {h.strip(' ()')}" for w, h in hints.items()) + ")"
            self = parser  # its usage, not the top level's
        m = re.match(r"argument (\S+): invalid choice: '([^']*)' \(choose from (.*)\)$", message)
        if m:
            hint = suggest(m.group(2), re.findall(r"'([^']*)'", m.group(3)))
            if hint:
                message = f"argument {m.group(1)}: invalid choice: '{m.group(2)}'{hint}"
        super(_Parser, self).error(message)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with `command`, only that command's module is imported (None: every one)."""
    _Parser.deepest = None
    p = _Parser(prog="migconform", description="Conformance checks for QEMU live-migration streams.")
    sub = p.add_subparsers(dest="command", required=True)
    for module, adder, helps in COMMANDS:
        if command is None or command in helps:
            getattr(importlib.import_module(module), adder)(sub)
        else:
            for name, text in helps.items():
                sub.add_parser(name, help=text, add_help=False)
    return p


# Errors whose message is for the user (one line, exit 2), by the module defining them. Looked
# up only in modules already imported: a command that never loaded one cannot have raised its
# error, and start-up does not pay for the check machinery.
_ONE_LINE_ERRORS = (
    ("conformance.errors", "UsageError"),
    ("conformance.check.inputs", "InputError"),
    ("conformance.check.pipeline", "StreamReadError"),
    # a QEMU that is missing, refuses its command line or dies: the machine's problem, said in
    # QEMU's own words (process.py folds its stderr into one line)
    ("conformance.qemu.binaries", "QemuNotFound"),
    ("conformance.qemu.binaries", "QemuError"),
)


def _for_the_user(e: Exception) -> bool:
    return any(isinstance(e, getattr(sys.modules[m], name)) for m, name in _ONE_LINE_ERRORS if m in sys.modules)


def main(argv: list[str] | None = None) -> int:
    if argv is None and threading.current_thread() is threading.main_thread():
        _signals.install()  # the command itself (tests pass argv and keep their own handlers)
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    names = [n for _, _, helps in COMMANDS for n in helps]
    if command is not None and command not in names and argv and argv[0] == command:
        hint = suggest(command, names) or f"; the commands are: {', '.join(names)}"
        print(f"migconform: error: unknown command '{command}'{hint}", file=sys.stderr)
        return EXIT_USAGE
    if command is None or command not in names:
        command = ""  # --help, or a mistake argparse reports: no command module is needed
    parser = build_parser(command)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:
        return EXIT_OK
    except KeyboardInterrupt:
        print("migconform: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if _for_the_user(e):
            print(f"migconform: error: {e}", file=sys.stderr)
            return EXIT_USAGE
        if os.environ.get("MIGCONFORM_DEBUG"):  # a bug of ours: still one line, the traceback on request
            raise
        print(f"migconform: internal error: {type(e).__name__}: {e} (set MIGCONFORM_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
