"""What a destination of a given QEMU version accepts (the codes: docs/violations.md).

Only versions whose behaviour was checked on a real binary are modelled; the rest of the
history is read from QEMU's sources and is not claimed here. The facts per version are rows of
conformance/versions.py; a profile adds the machine types the version's compat data lists.

A profile also says how THIS destination was started, beyond its version: its machine type
(an alias such as `pc` resolved as that version resolves it), its -global settings, its
migration capabilities and parameters. `configure` makes one; `parse_spec` reads the one-string
form `VERSION[,machine=M][,DRIVER.PROP=V][,CAPABILITY=on|off][,PARAMETER=V]`. What the
destination was not given is the version's default (rules/settings.py compares the two sides).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from conformance.versions import FACTS, NEWEST, Modelled


@dataclass(frozen=True, kw_only=True)
class DestinationProfile:
    version: str
    # the meaning of each fact: conformance/versions.py
    mig_cmd_max: int
    multifd_flush_understood: bool
    zero_fill_must_be_zero: bool
    compress_page_known: bool
    validated_capabilities: frozenset[str]
    multifd_zero_pages_understood: bool

    @functools.cached_property
    def machine_types(self) -> frozenset[str]:
        """Versioned x86 machine types the version offers (compat data, checked against
        -machine help); read on first use, not at import."""
        return _machines(self.version)

    # how this destination was started (configure); empty: the version's defaults
    machine: str | None = None  # resolved machine type
    globals: Mapping[str, str] = field(default_factory=dict, hash=False)  # "migration.send-section-footer" -> "off"
    capabilities: Mapping[str, bool] = field(default_factory=dict, hash=False)
    parameters: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def global_value(self, name: str, default: str = "on") -> str:
        """A -global of the destination ("on"/"off" normalised), or `default`."""
        v = self.globals.get(name)
        if v is None:
            return default
        return {"true": "on", "yes": "on", "false": "off", "no": "off"}.get(v.lower(), v.lower())

    @property
    def footers(self) -> bool:
        """The destination expects a footer after every section (migration.send-section-footer)."""
        return self.global_value("migration.send-section-footer") != "off"

    @property
    def expects_configuration(self) -> bool:
        """The destination reads a CONFIGURATION record first (migration.send-configuration)."""
        return self.global_value("migration.send-configuration") != "off"

    @property
    def configured(self) -> bool:
        return bool(self.globals or self.capabilities or self.parameters)

    def side(self):
        """These settings as one side of rules.settings.judge_sides."""
        from conformance.rules.settings import Side

        return Side(self.version, self.machine, dict(self.globals), dict(self.capabilities), dict(self.parameters))

    def lacks_machine(self, name: str) -> bool:
        """True for a versioned pc machine type this version does not have."""
        return bool(_VERSIONED.fullmatch(name)) and name not in self.machine_types


_VERSIONED = re.compile(r"pc-(i440fx|q35)-\d+\.\d+(\.\d+)?")


def _machines(version: str) -> frozenset:
    from conformance.rules import compat

    return frozenset(m for m in compat.machine_types(version) if _VERSIONED.fullmatch(m))


def _profile(m: Modelled) -> DestinationProfile:
    return DestinationProfile(
        version=m.version,
        mig_cmd_max=m.mig_cmd_max,
        multifd_flush_understood=m.multifd_flush_understood,
        zero_fill_must_be_zero=m.zero_fill_must_be_zero,
        compress_page_known=m.compress_page_known,
        validated_capabilities=m.validated_capabilities,
        multifd_zero_pages_understood=m.multifd_zero_pages_understood,
    )


PROFILES = {v: _profile(m) for v, m in FACTS.items()}


class UnknownTarget(ValueError):
    pass


def profile(version: str | None) -> DestinationProfile:
    v = version or NEWEST
    if v not in PROFILES:
        raise UnknownTarget(f"target {v!r} is not modelled; choose one of {', '.join(PROFILES)}")
    return PROFILES[v]


def resolve_machine(version: str, machine: str) -> str:
    """`machine` as that version resolves it (aliases such as pc, q35); unchanged when the
    version does not know it (the loader then says the destination cannot start)."""
    from conformance.rules import compat

    try:
        return compat.resolve_machine(version, machine)
    except KeyError:
        return machine


def configure(version: str | None, *, machine: str | None = None, globals: Mapping[str, str] | None = None,
              capabilities: Mapping[str, bool] | None = None, parameters: Mapping[str, Any] | None = None
              ) -> DestinationProfile:
    """The profile of a destination of `version` started with these settings."""
    p = profile(version)
    return replace(p, machine=resolve_machine(p.version, machine) if machine else None, globals=dict(globals or {}),
                   capabilities=dict(capabilities or {}), parameters=dict(parameters or {}))


def _value(text: str) -> Any:
    low = text.lower()
    if low in ("on", "true", "yes"):
        return True
    if low in ("off", "false", "no"):
        return False
    return int(text) if text.isdigit() else text


def parse_spec(spec: str, known_capabilities: frozenset[str] = frozenset()) -> DestinationProfile:
    """`VERSION[,machine=M][,DRIVER.PROP=V][,CAPABILITY=on|off][,PARAMETER=V]`: a name with a dot
    is a -global, a name in `known_capabilities` a capability, any other a parameter.
    UnknownTarget (one line) for anything else."""
    head, *items = [x.strip() for x in spec.split(",")]
    machine, globals_, caps, params = None, {}, {}, {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name or not value:
            raise UnknownTarget(f"destination {spec!r}: {item!r} is not NAME=VALUE")
        if name == "machine":
            machine = value
        elif "." in name:
            globals_[name] = value
        elif name in known_capabilities:
            v = _value(value)
            if not isinstance(v, bool):
                raise UnknownTarget(f"destination {spec!r}: capability {name} takes on or off")
            caps[name] = v
        else:
            params[name] = _value(value)
    return configure(head or None, machine=machine, globals=globals_, capabilities=caps, parameters=params)
