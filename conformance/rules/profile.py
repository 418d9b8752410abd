"""What a destination of a given QEMU version accepts (spec validation.md).

Only versions whose behaviour was checked on a real binary are modelled; the rest of the
history (spec wire-format.md §10) is read from QEMU's sources and is not claimed here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class DestinationProfile:
    version: str
    # first MIG_CMD id the destination does not know (7.2: 11, 10.0: 12 after SWITCHOVER_START)
    mig_cmd_max: int
    multifd_flush_understood: bool  # RAM_SAVE_FLAG_MULTIFD_FLUSH (8.0+)
    zero_fill_must_be_zero: bool  # 8.2+
    compress_page_known: bool  # COMPRESS_PAGE exists (removed in 9.1)
    # capabilities the configuration record may carry (others: "Received unknown capability")
    validated_capabilities: frozenset = frozenset({"x-ignore-shared"})

    # versioned x86 machine types the version offers (compat data, checked against -machine help)
    machine_types: frozenset = frozenset()

    def lacks_machine(self, name: str) -> bool:
        """True for a versioned pc machine type this version does not have."""
        return bool(_VERSIONED.fullmatch(name)) and name not in self.machine_types


_VERSIONED = re.compile(r"pc-(i440fx|q35)-\d+\.\d+(\.\d+)?")


def _machines(version: str) -> frozenset:
    from conformance.rules import compat

    return frozenset(m for m in compat.machine_types(version) if _VERSIONED.fullmatch(m))


PROFILES = {
    "7.2": DestinationProfile("7.2", 11, False, False, True, frozenset({"x-ignore-shared"}), _machines("7.2")),
    "10.0": DestinationProfile("10.0", 12, True, True, False, frozenset({"x-ignore-shared", "mapped-ram"}),
                               _machines("10.0")),
}
NEWEST = "10.0"


class UnknownTarget(ValueError):
    pass


def profile(version: str | None) -> DestinationProfile:
    v = version or NEWEST
    if v not in PROFILES:
        raise UnknownTarget(f"target {v!r} is not modelled; choose one of {', '.join(PROFILES)}")
    return PROFILES[v]
