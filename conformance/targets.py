"""What a destination of a given QEMU version accepts (spec validation.md).

Only versions whose behaviour was checked on a real binary are modelled; the rest of the
history (spec wire-format.md §10) is read from QEMU's sources and is not claimed here.
"""

from __future__ import annotations

from dataclasses import dataclass

from .violations import Severity


@dataclass(frozen=True)
class DestinationProfile:
    version: str
    # first MIG_CMD id the destination does not know (7.2: 11, 10.0: 12 after SWITCHOVER_START)
    mig_cmd_max: int
    multifd_flush_understood: bool  # RAM_SAVE_FLAG_MULTIFD_FLUSH (8.0+)
    zero_fill_must_be_zero: bool  # 8.2+
    hook_fails: bool  # RAM_SAVE_FLAG_HOOK without RDMA fails the section (7.2), ignored on 10.0
    compress_page_known: bool  # COMPRESS_PAGE exists (removed in 9.1)
    # capabilities the configuration record may carry (others: "Received unknown capability")
    validated_capabilities: frozenset = frozenset({"x-ignore-shared"})

    @property
    def zero_fill_severity(self) -> Severity:
        return Severity.REJECT if self.zero_fill_must_be_zero else Severity.DEVIATION


PROFILES = {
    "7.2": DestinationProfile("7.2", 11, False, False, True, True, frozenset({"x-ignore-shared"})),
    "10.0": DestinationProfile("10.0", 12, True, True, False, False, frozenset({"x-ignore-shared", "mapped-ram"})),
}
NEWEST = "10.0"


class UnknownTarget(ValueError):
    pass


def profile(version: str | None) -> DestinationProfile:
    v = version or NEWEST
    if v not in PROFILES:
        raise UnknownTarget(f"target {v!r} is not modelled; choose one of {', '.join(PROFILES)}")
    return PROFILES[v]
