"""One-sided settings: -global, capabilities and parameters given to the source alone or to
the destination alone (`--source-global`/`--dest-global`, `--source-capability`/
`--dest-capability`, `--source-parameter`/`--dest-parameter`), validated as a manifest
validates them. Shared by check's destination profile (cli/profile_options.py), capture,
replay and the matrix (whose axis syntax is in tools/sides.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable



def _mf():
    # the manifest schema validates the settings; imported only when there are settings, so
    # that a plain `check` does not pay for it at start-up (tests/test_startup.py)
    from conformance.check import manifest

    return manifest


class SidesError(ValueError):
    """A bad one-sided setting (one line)."""


def parse_setting_value(value: str) -> int | bool | str:
    """A parameter or capability value as QMP wants it: on/off -> bool, digits -> int."""
    if value.lower() in ("on", "true", "yes"):
        return True
    if value.lower() in ("off", "false", "no"):
        return False
    return int(value) if value.isdigit() else value


@dataclass
class Sides:
    source_globals: tuple[str, ...] = ()
    dest_globals: tuple[str, ...] = ()
    source_capabilities: dict[str, bool] = field(default_factory=dict)
    dest_capabilities: dict[str, bool] = field(default_factory=dict)
    source_parameters: dict[str, int | bool | str] = field(default_factory=dict)
    dest_parameters: dict[str, int | bool | str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return any((self.source_globals, self.dest_globals, self.source_capabilities, self.dest_capabilities,
                    self.source_parameters, self.dest_parameters))

    @property
    def source_key(self) -> str:
        """What changes the source (its capture): the same text for the same settings, "" for none."""
        if not (self.source_globals or self.source_capabilities or self.source_parameters):
            return ""
        return repr((self.source_globals, sorted(self.source_capabilities.items()),
                     sorted(self.source_parameters.items())))

    @property
    def only_globals(self) -> bool:
        """Only -global settings are one-sided (the compat model predicts those)."""
        return not (self.source_capabilities or self.dest_capabilities or self.source_parameters
                    or self.dest_parameters)

    def merged(self, other: "Sides") -> "Sides":
        return Sides((*self.source_globals, *other.source_globals), (*self.dest_globals, *other.dest_globals),
                     {**self.source_capabilities, **other.source_capabilities},
                     {**self.dest_capabilities, **other.dest_capabilities},
                     {**self.source_parameters, **other.source_parameters},
                     {**self.dest_parameters, **other.dest_parameters})

    def manifest_fields(self) -> dict:
        """The fields of manifest.Arguments for these settings."""
        return {"source_globals": tuple(self.source_globals), "dest_globals": tuple(self.dest_globals),
                "source_capabilities": dict(self.source_capabilities), "dest_capabilities": dict(self.dest_capabilities),
                "source_parameters": dict(self.source_parameters), "dest_parameters": dict(self.dest_parameters)}


def _capability(item: str, where: str) -> tuple[str, bool]:
    name, sep, value = item.partition("=")
    on = True if not sep else parse_setting_value(value)
    if not isinstance(on, bool):
        raise SidesError(f"{where}: {item!r}: a capability takes on or off")
    _mf().check_capabilities({name: on}, where)
    return name, on


def _parameter(item: str, where: str) -> tuple[str, int | bool | str]:
    name, sep, value = item.partition("=")
    if not name or not sep:
        raise SidesError(f"{where}: {item!r}: expected NAME=VALUE")
    v = parse_setting_value(value)
    _mf().check_parameter(name, v, where)
    return name, v


def from_options(*, source_globals: Iterable[str] = (), dest_globals: Iterable[str] = (),
                 source_capabilities: Iterable[str] = (), dest_capabilities: Iterable[str] = (),
                 source_parameters: Iterable[str] = (), dest_parameters: Iterable[str] = ()) -> Sides:
    """Sides from command-line values, validated as a manifest validates them; SidesError."""
    if not any((source_globals, dest_globals, source_capabilities, dest_capabilities, source_parameters,
                dest_parameters)):
        return Sides()
    mf = _mf()
    try:
        return Sides(
            tuple(mf.check_global(g, "--source-global") for g in source_globals),
            tuple(mf.check_global(g, "--dest-global") for g in dest_globals),
            dict(_capability(c, "--source-capability") for c in source_capabilities),
            dict(_capability(c, "--dest-capability") for c in dest_capabilities),
            dict(_parameter(p, "--source-parameter") for p in source_parameters),
            dict(_parameter(p, "--dest-parameter") for p in dest_parameters))
    except mf.ManifestError as e:
        raise SidesError(str(e)) from None


def from_args(args) -> Sides:
    """Sides from an argparse namespace made with add_options."""
    names = ("source_globals", "dest_globals", "source_capabilities", "dest_capabilities", "source_parameters",
             "dest_parameters")  # replay has only the dest_ ones
    return from_options(**{n: getattr(args, n, None) or () for n in names})


def add_options(parser, *, source: bool = True) -> None:
    """The one-sided options (`source`: also the source's; replay has only a destination)."""
    sides = ("source", "dest") if source else ("dest",)
    for side in sides:
        who = "the source" if side == "source" else "the destination"
        parser.add_argument(f"--{side}-global", dest=f"{side}_globals", action="append", metavar="DRIVER.PROP=VALUE",
                            help=f"-global for {who} alone (repeatable)")
        parser.add_argument(f"--{side}-capability", dest=f"{side}_capabilities", action="append",
                            metavar="NAME[=on|off]", help=f"migration capability for {who} alone (repeatable)")
        parser.add_argument(f"--{side}-parameter", dest=f"{side}_parameters", action="append", metavar="K=V",
                            help=f"migration parameter for {who} alone (repeatable)")


