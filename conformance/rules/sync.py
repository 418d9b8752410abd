"""What the main stream says about multifd synchronisation, as one typed summary.

A multifd destination releases its channels at sync points of the main stream (QEMU
migration/multifd.c, migration/ram.c): 8.1+ sources (machine types 8.1 and newer) send a
RAM_SAVE_FLAG_MULTIFD_FLUSH record at each one; 7.2, and newer sources for machine types
<= 8.0 (multifd-flush-after-each-section), sync at the end (EOS) of every RAM section.
The Loader counts these as it judges the main stream; the multifd channel checks
(conformance.rules.channels) and the RAM model (conformance.rules.ram_model) read the mode
and the number of sync points from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FLUSH, PER_SECTION = "flush", "per-section"


@dataclass(frozen=True)
class SyncSummary:
    flushes: int = 0  # RAM_SAVE_FLAG_MULTIFD_FLUSH records
    ram_eos: int = 0  # EOS records closing a part of the RAM section
    blocks: dict[str, int] = field(default_factory=dict)  # MEM_SIZE: name -> used_length (announced, non-zero)

    @property
    def mode(self) -> str:
        """A stream with any FLUSH syncs on them; one without, on every RAM EOS."""
        return FLUSH if self.flushes else PER_SECTION

    @property
    def sync_points(self) -> int:
        return self.flushes if self.flushes else self.ram_eos
