"""Structure-aware mutation of a real stream, for fuzzing campaigns.

A seed is decoded once into units (a record and the bytes it had on the wire); a fuzz input
is the seed plus a short list of named edits drawn by hypothesis, each applied to the unit
list: drop, duplicate, reorder or re-id sections, change versions and instance ids, edit
device fields through the stream's own VMDESCRIPTION, inject commands, odd RAM records,
bytes flipped inside a field. An edited unit is rebuilt by wireformat; the others keep their
original bytes, so a finding reads as "these records, these edits", not as a hex blob.
Hypothesis shrinks the edit list (fewer edits, simpler values) like any other draw.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import struct
from dataclasses import dataclass, field
from typing import Any, Callable

from hypothesis import strategies as st

from wireformat import vmstate
from wireformat.commands import build_command
from wireformat.constants import MigCmd, RamSaveFlag as F, SectionType as T
from wireformat.mainstream import build_record
from wireformat.reader import DecodeError, StreamReader, vmdescription_body_sizer
from wireformat.records import (
    Command,
    DeviceState,
    PackageEnd,
    RamRecord,
    RamRun,
    Record,
    SectionFooter,
    SectionHeader,
    VmDescription,
)

INTERESTING_U32 = (0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)
COMMAND_BYTE = bytes([T.QEMU_VM_COMMAND])


@dataclass
class Unit:
    record: Record
    raw: bytes | None  # the bytes on the wire; None once edited (rebuilt by wireformat)

    def bytes(self, page_size: int) -> bytes:
        return self.raw if self.raw is not None else build_record(self.record, page_size=page_size)


@dataclass
class Seed:
    data: bytes
    units: list[Unit]
    devices: list[dict]  # the VMDESCRIPTION's devices, in FULL-section order
    page_size: int = 4096

    def __repr__(self) -> str:  # hypothesis prints inputs: not the whole stream
        return f"Seed({len(self.data)} bytes, {len(self.units)} records)"

    def _repr_pretty_(self, p, cycle) -> None:  # hypothesis's printer: not every field
        p.text(repr(self))

    def sections(self) -> list[tuple[int, int]]:
        """(first, last) unit index of each top-level section, header to footer."""
        return _sections(self.units)


def decode_seed(data: bytes, page_size: int = 4096) -> Seed:
    """Units of a stream a real source wrote (device bodies framed by its own trailer).
    ValueError when the seed itself does not decode: a campaign needs a clean seed."""
    devices: list[dict] = []
    sizer = None
    try:  # the trailer first, to frame device bodies exactly
        for r in StreamReader(io.BytesIO(data)):
            if isinstance(r, VmDescription):
                devices = json.loads(r.json).get("devices", [])
    except (DecodeError, ValueError):
        pass
    if devices:
        sizer = vmdescription_body_sizer(copy.deepcopy(devices))
    recs: list[Record] = []
    for r in StreamReader(io.BytesIO(data), body_sizer=sizer):
        if isinstance(r, RamRun):
            recs.extend(r.records())
        else:
            if isinstance(r, RamRecord) and r.data is not None and not isinstance(r.data, bytes):
                r.data = bytes(r.data)
            recs.append(r)
    units = []
    for i, r in enumerate(recs):
        end = next((n.offset for n in recs[i + 1:] if not isinstance(n, PackageEnd)), len(data))
        units.append(Unit(r, b"" if isinstance(r, PackageEnd) else data[r.offset:end]))
    return Seed(data, units, devices if isinstance(devices, list) else [], page_size)


def _sections(units: list[Unit]) -> list[tuple[int, int]]:
    out, start = [], None
    for i, u in enumerate(units):
        r = u.record
        if isinstance(r, SectionHeader) and r.depth == 0:
            start = i
        elif isinstance(r, SectionFooter) and start is not None and r.depth == 0:
            out.append((start, i))
            start = None
    return out


# ------------------------------------------------------------------- the edits
# Each edit: (draw, state) -> a one-line description of what it did, or None (no place for it).

@dataclass
class State:
    seed: Seed
    units: list[Unit]
    applied: list[str] = field(default_factory=list)


def _pick(draw, items):
    return items[draw(st.integers(0, len(items) - 1))] if items else None


def _edit(units: list[Unit], i: int, **changes: Any) -> Record:
    rec = dataclasses.replace(units[i].record, **changes)
    units[i] = Unit(rec, None)
    return rec


U32 = 0xFFFFFFFF  # header fields are u32 on the wire: an edit of an edited value wraps


def _u32(draw) -> int:
    return draw(st.sampled_from(INTERESTING_U32) | st.integers(0, 2**32 - 1))


def _headers(s: State, full: bool | None = None) -> list[int]:
    return [i for i, u in enumerate(s.units) if isinstance(u.record, SectionHeader) and u.record.depth == 0
            and (full is None or u.record.is_full == full)]


def _describe(r: Record) -> str:
    if isinstance(r, SectionHeader):
        return f"{r.type_name} id={r.section_id}" + (f" {r.idstr!r}/{r.instance_id} v{r.version_id}" if r.is_full else "")
    if isinstance(r, RamRecord):
        return f"ram addr=0x{r.addr:x} flags=0x{r.flags:x}" + (f" block={r.block!r}" if r.block else "")
    if isinstance(r, DeviceState):
        return f"body of {r.idstr!r} ({len(r.data)} bytes)"
    if isinstance(r, Command):
        return f"{r.name} len={len(r.data)}"
    return r.kind


def drop_section(draw, s: State):
    sec = _pick(draw, _sections(s.units))
    if sec is None:
        return None
    what = _describe(s.units[sec[0]].record)
    del s.units[sec[0]:sec[1] + 1]
    return f"dropped section {what}"


def duplicate_section(draw, s: State):
    secs = _sections(s.units)
    sec, where = _pick(draw, secs), _pick(draw, secs)
    if sec is None:
        return None
    copy_ = [Unit(u.record, u.raw) for u in s.units[sec[0]:sec[1] + 1]]
    s.units[where[1] + 1:where[1] + 1] = copy_
    return f"duplicated section {_describe(copy_[0].record)} after {_describe(s.units[where[0]].record)}"


def swap_sections(draw, s: State):
    secs = _sections(s.units)
    if len(secs) < 2:
        return None
    a = draw(st.integers(0, len(secs) - 2))
    b = draw(st.integers(a + 1, len(secs) - 1))
    (a0, a1), (b0, b1) = secs[a], secs[b]
    ua, ub = s.units[a0:a1 + 1], s.units[b0:b1 + 1]
    s.units[a0:b1 + 1] = ub + s.units[a1 + 1:b0] + ua
    return f"swapped sections {_describe(ua[0].record)} and {_describe(ub[0].record)}"


def reid_section(draw, s: State):
    i = _pick(draw, _headers(s))
    if i is None:
        return None
    old = s.units[i].record
    new_id = draw(st.sampled_from([old.section_id + 1, 0, 0xFFFFFFFF]) | st.integers(0, 64)) & U32
    _edit(s.units, i, section_id=new_id)
    if draw(st.booleans()):  # the footer follows the header (a consistent re-id) or not
        for j in range(i + 1, len(s.units)):
            if isinstance(s.units[j].record, SectionFooter):
                _edit(s.units, j, section_id=new_id)
                break
    return f"section id of {_describe(old)} -> {new_id}"


def section_version(draw, s: State):
    i = _pick(draw, _headers(s, full=True))
    if i is None:
        return None
    old = s.units[i].record
    v = draw(st.sampled_from([old.version_id - 1, old.version_id + 1, 0, 0xFFFFFFFF]) | st.integers(0, 40)) & U32
    _edit(s.units, i, version_id=v % 2**32)
    return f"version of {_describe(old)} -> {v % 2**32}"


def instance_id(draw, s: State):
    i = _pick(draw, _headers(s, full=True))
    if i is None:
        return None
    old = s.units[i].record
    v = draw(st.sampled_from([old.instance_id + 1, 0xFFFFFFFF]) | st.integers(0, 8)) & U32
    _edit(s.units, i, instance_id=v % 2**32)
    return f"instance id of {_describe(old)} -> {v % 2**32}"


def rename_section(draw, s: State):
    heads = _headers(s, full=True)
    i, other = _pick(draw, heads), _pick(draw, heads)
    if i is None:
        return None
    old = s.units[i].record
    name = draw(st.sampled_from([s.units[other].record.idstr, old.idstr[:-1], old.idstr + "x", ""]))
    _edit(s.units, i, idstr=name)
    return f"idstr of {_describe(old)} -> {name!r}"


def _device_bodies(s: State) -> list[int]:
    return [i for i, u in enumerate(s.units) if isinstance(u.record, DeviceState) and u.record.depth == 0]


def _description_of(s: State, rec: DeviceState) -> dict | None:
    for d in s.seed.devices:
        if isinstance(d, dict) and d.get("name") == rec.idstr:
            return d
    return None


def device_field(draw, s: State):
    """One integer field (or array element) of a device body set to an edge value, the body
    re-encoded with the stream's own description."""
    i = _pick(draw, _device_bodies(s))
    if i is None:
        return None
    rec = s.units[i].record
    desc = _description_of(s, rec)
    if desc is None:
        return None
    try:
        decoded = vmstate.decode_body(desc, rec.data)
    except (vmstate.VmstateDecodeError, KeyError, TypeError, ValueError):
        return None
    ints = [k for k, f in enumerate(decoded.fields) if isinstance(f.value, int) and f.size in (1, 2, 4, 8)
            or isinstance(f.value, list) and f.value and isinstance(f.value[0], int)]
    k = _pick(draw, ints)
    if k is None:
        return None
    f = decoded.fields[k]
    size = f.size if isinstance(f.value, int) else max(1, f.size // max(1, len(f.value)))
    bits = 8 * min(size, 8)
    if f.type.startswith("int"):  # signed on the wire: int8 .. int64
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        lo, hi = 0, 2 ** bits - 1
    v = draw(st.sampled_from(sorted({0, 1, -1 if lo else 1, lo, hi, hi >> 1})) | st.integers(lo, hi))
    if isinstance(f.value, list):
        j = draw(st.integers(0, len(f.value) - 1))
        value = list(f.value)
        value[j] = v
        label = f"{f.name}[{j}]"
    else:
        value, label = v, f.name
    fields = list(decoded.fields)
    fields[k] = dataclasses.replace(f, value=value)
    try:
        body = vmstate.encode_body(desc, dataclasses.replace(decoded, fields=tuple(fields)))
    except (vmstate.VmstateEncodeError, KeyError, TypeError, ValueError, struct.error, OverflowError):
        return None
    _edit(s.units, i, data=body + bytes(rec.data[decoded.consumed:]))
    return f"{rec.idstr}.{label} = {v:#x} (was {f.value if isinstance(f.value, int) else f.value[j]:#x})"


def device_bytes(draw, s: State):
    """Byte-level change inside one device body: flip, set, insert, delete or cut."""
    i = _pick(draw, _device_bodies(s))
    if i is None:
        return None
    rec = s.units[i].record
    data = bytearray(rec.data)
    op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
    at = draw(st.integers(0, max(0, len(data) - 1)))
    if op == "flip" and data:
        data[at] ^= 1 << draw(st.integers(0, 7))
    elif op == "set" and data:
        data[at] = draw(st.sampled_from([0, 0xFF, 0x7E, 0x05, 0x80]))
    elif op == "insert":
        data[at:at] = draw(st.binary(min_size=1, max_size=8))
    elif op == "delete" and data:
        del data[at:at + draw(st.integers(1, 8))]
    elif op == "truncate":
        del data[at:]
    else:
        return None
    _edit(s.units, i, data=bytes(data))
    return f"{op} at byte {at} of {_describe(rec)}"


def _command(cmd: int, payload: bytes, length: int | None = None) -> bytes:
    if length is None:
        return COMMAND_BYTE + build_command(cmd, payload)
    return COMMAND_BYTE + struct.pack(">HH", cmd, length) + payload


def _boundaries(s: State) -> list[int]:
    """Unit indexes where a top-level record may start (after the header and configuration)."""
    return [i for i, u in enumerate(s.units) if i >= 2 and u.record.depth == 0
            and isinstance(u.record, (SectionHeader, Command))] + [len(s.units)]


class _Raw(Record):
    """Injected bytes that are no one record (a command with a wrong length, say)."""
    __slots__ = ("label",)

    def __init__(self, label: str):
        super().__init__()
        self.label = label

    @property
    def kind(self) -> str:
        return self.label


def inject_command(draw, s: State):
    at = _pick(draw, _boundaries(s))
    if at is None:
        return None
    kind = draw(st.sampled_from(["packaged-short", "packaged-long", "packaged-nested", "recv-bitmap",
                                 "unknown-id", "ping", "open-return-path", "postcopy-advise",
                                 "postcopy-listen", "postcopy-run", "ram-discard", "enable-colo",
                                 "postcopy-resume", "bad-length"]))
    P = MigCmd
    if kind == "packaged-short":  # announces fewer bytes than follow
        raw = _command(P.MIG_CMD_PACKAGED, struct.pack(">I", draw(st.integers(0, 16))))
    elif kind == "packaged-long":  # announces more than the stream has
        raw = _command(P.MIG_CMD_PACKAGED, struct.pack(">I", _u32(draw)))
    elif kind == "packaged-nested":
        inner = _command(P.MIG_CMD_PACKAGED, struct.pack(">I", 1)) + b"\x00"
        raw = _command(P.MIG_CMD_PACKAGED, struct.pack(">I", len(inner))) + inner
    elif kind == "recv-bitmap":
        name = draw(st.sampled_from([b"pc.ram", b"pc.bios", b"nope", b""]))
        raw = _command(P.MIG_CMD_RECV_BITMAP, bytes([len(name)]) + name)
    elif kind == "unknown-id":
        raw = _command(draw(st.integers(12, 0xFFFF)), b"", draw(st.integers(0, 8)))
    elif kind == "ping":
        raw = _command(P.MIG_CMD_PING, struct.pack(">I", _u32(draw)))
    elif kind == "open-return-path":
        raw = _command(P.MIG_CMD_OPEN_RETURN_PATH, b"")
    elif kind == "postcopy-advise":
        raw = _command(P.MIG_CMD_POSTCOPY_ADVISE, struct.pack(">QQ", draw(st.integers(0, 2**64 - 1)), 4096),
                       draw(st.sampled_from([None, 0, 8, 16])))
    elif kind == "postcopy-listen":
        raw = _command(P.MIG_CMD_POSTCOPY_LISTEN, b"")
    elif kind == "postcopy-run":
        raw = _command(P.MIG_CMD_POSTCOPY_RUN, b"")
    elif kind == "ram-discard":
        name = b"pc.ram"
        body = bytes([0, len(name)]) + name + b"\x00" + struct.pack(">QQ", 0, _u32(draw))
        raw = _command(P.MIG_CMD_POSTCOPY_RAM_DISCARD, body)
    elif kind == "enable-colo":
        raw = _command(P.MIG_CMD_ENABLE_COLO, b"")
    elif kind == "postcopy-resume":
        raw = _command(P.MIG_CMD_POSTCOPY_RESUME, b"")
    else:  # a fixed-length command announcing another length
        raw = _command(P.MIG_CMD_PING, b"\x00" * 8, draw(st.sampled_from([0, 2, 8])))
    s.units.insert(at, Unit(_Raw(f"injected {kind}"), raw))
    where = _describe(s.units[at + 1].record) if at + 1 < len(s.units) else "the end"
    return f"injected {kind} command before {where}"


RAM_FLAG_CHOICES = (0x1, 0x2, 0x4, 0x8, 0x10, 0x20, 0x40, 0x80, 0x100, 0x200, 0x22, 0x28, 0x2A, 0x6, 0xC, 0x400)


def ram_record(draw, s: State):
    """One RAM record with odd flags, another block name, offset or (MEM_SIZE) block length."""
    rams = [i for i, u in enumerate(s.units) if isinstance(u.record, RamRecord) and u.record.depth == 0]
    i = _pick(draw, rams)
    if i is None:
        return None
    old = s.units[i].record
    what = draw(st.sampled_from(["flags", "addr", "block", "size"] if old.blocks else ["flags", "addr", "block"]))
    if what == "flags":
        raw = bytearray(s.units[i].bytes(s.seed.page_size))
        flags = draw(st.sampled_from(RAM_FLAG_CHOICES))
        raw[:8] = struct.pack(">Q", (old.addr & ~0xFFF) | flags)  # the record word is rewritten as is
        s.units[i] = Unit(_Raw(f"ram record flags 0x{flags:x}"), bytes(raw))
        return f"flags of {_describe(old)} -> 0x{flags:x} (rest of the record as it was)"
    if what == "addr":
        addr = draw(st.sampled_from([0x7FFFFFFFF000, 1 << 32, 64 << 20, (64 << 20) - 4096]) | st.integers(0, 2**40)) & ~0xFFF
        _edit(s.units, i, addr=addr)
        return f"address of {_describe(old)} -> 0x{addr:x}"
    if what == "block":
        if old.block is None and not old.continued:
            return None
        name = draw(st.sampled_from(["pc.ram", "pc.bios", "pc.rom", "nope", "", "x" * 255]))
        _edit(s.units, i, block=name, flags=old.flags & ~int(F.RAM_SAVE_FLAG_CONTINUE))
        return f"block of {_describe(old)} -> {name!r}"
    blocks = [dataclasses.replace(b) for b in old.blocks]
    b = _pick(draw, blocks)
    b.used_length = draw(st.sampled_from([0, 4096, b.used_length * 2, b.used_length - 4096, 2**40])) & (2**64 - 1)
    _edit(s.units, i, blocks=blocks, addr=sum(x.used_length for x in blocks))
    return f"MEM_SIZE: used_length of {b.name!r} -> 0x{b.used_length:x}"


def truncate(draw, s: State):
    i = draw(st.integers(1, max(1, len(s.units) - 1)))
    cut = s.units[i:]
    del s.units[i:]
    return f"cut before unit {i} ({_describe(cut[0].record) if cut else 'end'})"


EDITS: dict[str, Callable] = {
    "drop-section": drop_section,
    "duplicate-section": duplicate_section,
    "swap-sections": swap_sections,
    "reid-section": reid_section,
    "section-version": section_version,
    "instance-id": instance_id,
    "rename-section": rename_section,
    "device-field": device_field,
    "device-bytes": device_bytes,
    "inject-command": inject_command,
    "ram-record": ram_record,
    "truncate": truncate,
}


@dataclass
class FuzzInput:
    seed: Seed
    edits: list[str]  # "name: what it did", in order
    units: list[Unit]

    def __repr__(self) -> str:
        return f"FuzzInput({self.edits!r})"

    def _repr_pretty_(self, p, cycle) -> None:  # hypothesis's printer: not every field
        p.text(repr(self))

    def data(self) -> bytes:
        ps = self.seed.page_size
        return b"".join(u.bytes(ps) for u in self.units)

    def changed(self) -> list[str]:
        """The records that differ from the seed (edited or injected), decoded."""
        return [f"unit {k}: {_describe(u.record)}" for k, u in enumerate(self.units) if u.raw is None or
                isinstance(u.record, _Raw)]


@st.composite
def fuzz_inputs(draw, seed: Seed, max_edits: int = 3, names: tuple[str, ...] | None = None) -> FuzzInput:
    s = State(seed, list(seed.units))
    choices = sorted(names or EDITS)
    for _ in range(draw(st.integers(1, max_edits))):
        name = draw(st.sampled_from(choices))
        what = EDITS[name](draw, s)
        if what is not None:
            s.applied.append(f"{name}: {what}")
    return FuzzInput(seed, s.applied, s.units)
