"""Structure-aware mutations of a real stream: each changes one thing at a place found by
decoding the stream, so that a fuzzer (or a differential test) knows what it broke.

A mutation returns the new bytes, or None when the stream has no place for it. `code` is
the violation the reference loader must report first; `accepted_by` the destination
versions that nonetheless complete the load (the codes: docs/violations.md).
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import Callable

from hypothesis import strategies as st

from wireformat.constants import MigCmd
from wireformat.reader import StreamReader
from wireformat.records import (
    Eof,
    RamRecord,
    RamRun,
    SectionFooter,
    SectionHeader,
    VmDescription,
)

from conformance.versions import FACTS


@dataclass(frozen=True)
class Mutation:
    name: str
    code: str  # first violation the loader reports
    apply: Callable[[bytes], bytes | None]
    accepted_by: frozenset[str] = frozenset()
    conforming_for: frozenset[str] = frozenset()  # versions for which the result is a conforming stream
    qemu_text: str | None = None  # what the destination prints (a fragment), when it rejects

    def __repr__(self) -> str:
        return f"Mutation({self.name})"


def _records(data: bytes) -> list:
    """The stream's records, runs expanded; decoding stops quietly where it must."""
    out = []
    try:
        for r in StreamReader(io.BytesIO(data)):
            out.extend(r.records() if isinstance(r, RamRun) else [r])
    except ValueError:
        pass
    return out


def _first(data, pred):
    return next((r for r in _records(data) if pred(r)), None)


def _device_header(data: bytes, idstr: str) -> SectionHeader | None:
    return _first(data, lambda r: isinstance(r, SectionHeader) and r.idstr == idstr)


def _set_u32(data: bytes, at: int, value: int) -> bytes:
    return data[:at] + struct.pack(">I", value) + data[at + 4 :]


def bad_magic(data):
    return b"QEVX" + data[4:]


def unknown_section_type(data):
    eof = _first(data, lambda r: isinstance(r, Eof))
    return None if eof is None else data[: eof.offset] + b"\x09" + data[eof.offset + 1 :]


def section_version_too_new(data):
    h = _device_header(data, "timer")
    if h is None:
        return None
    return _set_u32(data, h.offset + 1 + 4 + 1 + len(h.idstr) + 4, h.version_id + 1)


def unknown_idstr(data):
    h = _device_header(data, "timer")
    if h is None:
        return None
    at = h.offset + 6
    return data[:at] + b"timex" + data[at + 5 :]


def footer_mismatch(data):
    f = _first(data, lambda r: isinstance(r, SectionFooter) and r.offset > 1000)
    return None if f is None else _set_u32(data, f.offset + 1, f.section_id + 0x40)


def missing_footer(data):
    """A device section's footer byte replaced, as a destination reads it."""
    h = _device_header(data, "timer")
    f = h and _first(data, lambda r: isinstance(r, SectionFooter) and r.offset > h.offset)
    return None if not f else data[: f.offset] + b"\x7f" + data[f.offset + 1 :]


def ram_offset_out_of_range(data):
    r = _first(data, lambda r: isinstance(r, RamRecord) and r.flags == 0x22)
    return None if r is None else data[: r.offset] + struct.pack(">Q", 0x7FFFFFFF000 | 0x22) + data[r.offset + 8 :]


def ram_unknown_flags(data):
    r = _first(data, lambda r: isinstance(r, RamRecord) and r.flags == 0x22)
    return None if r is None else data[: r.offset] + struct.pack(">Q", r.addr | 0x2A) + data[r.offset + 8 :]


def ram_zero_fill(data):
    r = _first(data, lambda r: isinstance(r, RamRecord) and r.flags == 0x22)
    return None if r is None else data[: r.offset + 8] + b"\x01" + data[r.offset + 9 :]


def ram_unknown_block(data):
    r = _first(data, lambda r: isinstance(r, RamRecord) and r.block and r.flags in (0x02, 0x08) and len(r.block) >= 3)
    if r is None:
        return None
    at = r.offset + 9
    return data[:at] + b"zz" + data[at + 2 :]


def switchover_start(data):
    """SWITCHOVER_START inserted before the first FULL section (10.0 sends it there)."""
    if b"\x08\x00\x0b\x00\x00" in data:
        return None
    h = _first(data, lambda r: isinstance(r, SectionHeader) and r.section_type == 4)
    return None if h is None else data[: h.offset] + b"\x08\x00\x0b\x00\x00" + data[h.offset :]


def truncate_in_ram(data):
    r = _first(data, lambda r: isinstance(r, RamRecord) and r.flags in (0x28, 0x08))
    return None if r is None else data[: r.offset + 100]


def drop_trailer(data):
    v = _first(data, lambda r: isinstance(r, VmDescription))
    return None if v is None else data[: v.offset]


def garbage_after_trailer(data):
    return data + b"\x00garbage\xff" * 4


def truncate_trailer(data):
    v = _first(data, lambda r: isinstance(r, VmDescription))
    return None if v is None else data[: v.offset + 5 + len(v.json) // 2]


def _versions(fact: Callable) -> frozenset[str]:
    """The modelled versions whose facts (conformance/versions.py) satisfy `fact`."""
    return frozenset(v for v, m in FACTS.items() if fact(m))


ALL_VERSIONS = _versions(lambda m: True)
FILL_ACCEPTED = _versions(lambda m: not m.zero_fill_must_be_zero)  # the page is filled with the byte
KNOW_SWITCHOVER_START = _versions(lambda m: m.mig_cmd_max > MigCmd.MIG_CMD_SWITCHOVER_START)
MUTATIONS = [
    Mutation("bad-magic", "bad-magic", bad_magic, qemu_text="Not a migration stream"),
    Mutation("unknown-section-type", "unknown-section-type", unknown_section_type, qemu_text="Unknown savevm section type 9"),
    Mutation("section-version-too-new", "section-version-too-new", section_version_too_new, qemu_text="unsupported version"),
    Mutation("unknown-idstr", "unknown-section", unknown_idstr, qemu_text="Unknown savevm section or instance 'timex' 0"),
    Mutation("footer-mismatch", "footer-mismatch", footer_mismatch, qemu_text="Mismatched section id in footer"),
    Mutation("missing-footer", "missing-footer", missing_footer, qemu_text="Missing section footer for timer"),
    Mutation("ram-offset-out-of-range", "ram-offset-out-of-range", ram_offset_out_of_range, qemu_text="Illegal RAM offset 7fffffff000"),
    Mutation("ram-unknown-flags", "ram-unknown-flags", ram_unknown_flags, qemu_text="Unknown combination of migration flags: 0x2a"),
    Mutation("ram-zero-fill", "ram-zero-fill", ram_zero_fill, accepted_by=FILL_ACCEPTED, qemu_text="Found a zero page with value 1"),
    Mutation("ram-unknown-block", "ram-unknown-block", ram_unknown_block, qemu_text="Can't find block"),
    Mutation("switchover-start", "unknown-command", switchover_start, accepted_by=KNOW_SWITCHOVER_START,
             conforming_for=KNOW_SWITCHOVER_START, qemu_text="MIG_CMD 0xb unknown (len 0x0)"),
    Mutation("truncate-in-ram", "truncated", truncate_in_ram),
    Mutation("drop-trailer", "missing-vmdescription", drop_trailer, accepted_by=ALL_VERSIONS),
    Mutation("garbage-after-trailer", "trailing-data", garbage_after_trailer, accepted_by=ALL_VERSIONS),
    Mutation("truncate-trailer", "vmdescription-truncated", truncate_trailer, accepted_by=ALL_VERSIONS),
]
