"""The destination profile on the command line: one option group for every command that judges
a stream (check, the pytest plugin), so that all of them judge the same destination.

    --target VERSION             the destination's QEMU version (default: the newest modelled)
    --machine TYPE               its machine type (an alias resolved as that version resolves it)
    --dest SPEC                  all of it in one string: VERSION[,machine=M][,DRIVER.PROP=V][,CAP=on|off][,PARAM=V]
    --dest-global / --dest-capability / --dest-parameter   its -global, capabilities, parameters
    --dest-qemu PATH             start that binary with the stream's machine type and read its settings over QMP
    --dest-qmp SOCKET            read them from a running destination's QMP socket
    --source-version, --source-global / --source-capability / --source-parameter, --source-paused
                                 the source's, when known: its one-sided settings are judged against
                                 the destination's (rules/settings.py), its version judges the return path

Later sources of a setting win: QMP (--dest-qemu/--dest-qmp), then --dest, then the single options.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from conformance.errors import UsageError
from conformance.versions import NEWEST, VERSIONS


# (flag, argparse dest, keyword arguments): the one list both check and the pytest plugin register
OPTIONS: tuple[tuple[str, str, dict], ...] = (
    ("--target", "target", dict(metavar="VERSION", help=f"the destination's QEMU version ({', '.join(VERSIONS)}; "
                                f"default {NEWEST})")),
    ("--machine", "machine", dict(metavar="TYPE", help="the destination's machine type (aliases such as pc and q35 "
                                  "resolved as that version resolves them; compared as QEMU does)")),
    ("--dest", "dest", dict(metavar="SPEC", help="the destination in one string: VERSION[,machine=TYPE]"
                            "[,DRIVER.PROP=V][,CAPABILITY=on|off][,PARAMETER=V]")),
    ("--dest-global", "dest_globals", dict(action="append", metavar="DRIVER.PROP=VALUE",
                                           help="a -global of the destination (repeatable)")),
    ("--dest-capability", "dest_capabilities", dict(action="append", metavar="NAME[=on|off]",
                                                    help="a migration capability of the destination (repeatable)")),
    ("--dest-parameter", "dest_parameters", dict(action="append", metavar="K=V",
                                                 help="a migration parameter of the destination (repeatable)")),
    ("--dest-qemu", "dest_qemu", dict(metavar="PATH", help="start this QEMU binary with the stream's machine type and "
                                      "read its version, machine type, capabilities and parameters over QMP")),
    ("--dest-qmp", "dest_qmp", dict(metavar="SOCKET", help="read them from a running destination's QMP unix socket")),
    ("--source-version", "source_version", dict(metavar="VERSION", help="the source's QEMU version (judges the "
                                                "return-path messages it must understand)")),
    ("--source-global", "source_globals", dict(action="append", metavar="DRIVER.PROP=VALUE",
                                               help="a -global of the source (repeatable)")),
    ("--source-capability", "source_capabilities", dict(action="append", metavar="NAME[=on|off]",
                                                        help="a migration capability of the source (repeatable)")),
    ("--source-parameter", "source_parameters", dict(action="append", metavar="K=V",
                                                     help="a migration parameter of the source (repeatable)")),
    ("--source-paused", "source_paused", dict(action="store_true", help="the source guest was paused (a running one "
                                              "waits for switchover-ack)")),
)


def add_options(parser) -> None:
    """The profile options (argparse parser)."""
    g = parser.add_argument_group("destination profile (what is not in the stream)")
    for flag, dest, kw in OPTIONS:
        g.add_argument(flag, dest=dest, **kw)


PYTEST_PREFIX = "--captures-"  # --target is --captures-target there, --dest-global --captures-dest-global ...


def add_pytest_options(group) -> None:
    """The same options for the pytest plugin, named --captures-*; `--captures-target` is
    repeatable there (one test item per target)."""
    for flag, dest, kw in OPTIONS:
        kw = dict(kw)
        if dest == "target":
            kw.update(action="append", default=[], help=kw["help"] + " (repeatable: one item per version)")
        group.addoption(PYTEST_PREFIX + flag[2:], dest="captures_" + dest, **kw)


def pytest_namespace(config, target: str | None):
    """An argparse-like namespace of the plugin's options for from_args, for one target."""
    from types import SimpleNamespace

    ns = SimpleNamespace(**{dest: config.getoption("captures_" + dest) for _, dest, _ in OPTIONS})
    ns.target = target
    return ns


@dataclass
class Profiles:
    dest: Any  # rules.profile.DestinationProfile
    source: Any  # rules.settings.Side, or None when nothing of the source was given


def _known_capabilities() -> frozenset[str]:
    from conformance.rules.compat import capabilities

    return frozenset(capabilities().capabilities)


def from_args(args, stream: str | None = None) -> Profiles:
    """The profiles the options describe; UsageError (one line) for a bad one. `stream`: the
    main stream's path, whose machine type --dest-qemu starts the binary with."""
    from conformance.rules.profile import UnknownTarget, configure, parse_spec
    from conformance.rules.settings import Side
    from conformance.check.sides import SidesError, from_options

    try:
        names = ("source_globals", "dest_globals", "source_capabilities", "dest_capabilities", "source_parameters",
                 "dest_parameters")
        sides = from_options(**{n: getattr(args, n, None) or () for n in names})
    except SidesError as e:
        raise UsageError(str(e)) from None
    base: dict[str, Any] = {"version": None, "machine": None, "capabilities": {}, "parameters": {}}
    if getattr(args, "dest_qmp", None) or getattr(args, "dest_qemu", None):
        base = _from_qemu(args, stream, sides.dest_globals)
    try:
        spec = parse_spec(args.dest, _known_capabilities()) if getattr(args, "dest", None) else None
        version = getattr(args, "target", None) or (spec.version if spec else None) or base["version"]
        machine = getattr(args, "machine", None) or (spec.machine if spec else None) or base["machine"]
        dest = configure(version, machine=machine,
                         globals={**(spec.globals if spec else {}), **_globals(sides.dest_globals)},
                         capabilities={**base["capabilities"], **(spec.capabilities if spec else {}),
                                       **sides.dest_capabilities},
                         parameters={**base["parameters"], **(spec.parameters if spec else {}), **sides.dest_parameters})
        source = None
        src_version = getattr(args, "source_version", None)
        if src_version or sides.source_globals or sides.source_capabilities or sides.source_parameters:
            src_version = configure(src_version or dest.version).version  # a modelled version, or UnknownTarget
            source = Side(src_version, dest.machine, _globals(sides.source_globals), dict(sides.source_capabilities),
                          dict(sides.source_parameters), running=not getattr(args, "source_paused", False))
    except UnknownTarget as e:
        raise UsageError(str(e)) from None
    return Profiles(dest, source)


def _globals(items) -> dict[str, str]:
    return dict(g.split("=", 1) for g in items)


def _from_qemu(args, stream: str | None, dest_globals) -> dict:
    from conformance.check.destination import stream_machine
    from conformance.qemu import QemuError, QemuNotFound
    from conformance.qemu.binaries import make_binary
    from conformance.qemu.dest_profile import from_binary, from_socket

    try:
        if args.dest_qmp:
            return from_socket(args.dest_qmp)
        machine = getattr(args, "machine", None) or (stream_machine(stream) if stream else None)
        if machine is None:
            raise UsageError("--dest-qemu: the stream names no machine type (no configuration record): give --machine")
        return from_binary(make_binary(args.dest_qemu, "--dest-qemu"), machine, tuple(dest_globals))
    except (QemuError, QemuNotFound, OSError) as e:
        raise UsageError(f"{args.dest_qmp or args.dest_qemu}: {str(e).splitlines()[0]}") from None
