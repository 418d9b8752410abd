"""What a destination of a given QEMU version accepts (the codes: docs/violations.md).

Only versions whose behaviour was checked on a real binary are modelled; the rest of the
history is read from QEMU's sources and is not claimed here. The facts per version are rows of
conformance/versions.py; a profile adds the machine types the version's compat data lists.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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

    # versioned x86 machine types the version offers (compat data, checked against -machine help)
    machine_types: frozenset[str] = frozenset()

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
        machine_types=_machines(m.version),
    )


PROFILES = {v: _profile(m) for v, m in FACTS.items()}


class UnknownTarget(ValueError):
    pass


def profile(version: str | None) -> DestinationProfile:
    v = version or NEWEST
    if v not in PROFILES:
        raise UnknownTarget(f"target {v!r} is not modelled; choose one of {', '.join(PROFILES)}")
    return PROFILES[v]
