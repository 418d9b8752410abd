"""`migconform dump`: the decoded structure of a stream, without judgement."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from typing import BinaryIO

from wireformat.budgets import BUDGETS, DecodeBudget
from wireformat.commands import RELEASED, CommandSet
from wireformat.vmstate import VmstateDecodeError, parse_vmdescription
from wireformat.reader import DecodeError, StreamReader
from wireformat.records import (
    Command,
    Configuration,
    DeviceState,
    Eof,
    FileHeader,
    RamRecord,
    RamRun,
    SectionHeader,
    TrailingData,
    VmDescription,
)
from wireformat.constants import QEMU_VM_FILE_MAGIC
from wireformat.constants import RamSaveFlag as F

_KIND = {
    int(F.RAM_SAVE_FLAG_PAGE): "page",
    int(F.RAM_SAVE_FLAG_ZERO): "zero",
    int(F.RAM_SAVE_FLAG_XBZRLE): "xbzrle",
    int(F.RAM_SAVE_FLAG_COMPRESS_PAGE): "compressed",
}


MAX_KEPT_BODIES = BUDGETS.kept_bodies
# records a stream has once: the key of `dump_stream`'s result they fill
_ONE_OF = {FileHeader: "header", Configuration: "configuration", TrailingData: "trailing"}


def _plain(v):
    """A decoded vmstate value as JSON-friendly data."""
    if isinstance(v, (bytes, bytearray, memoryview)):
        b = bytes(v)
        return b.hex() if len(b) <= 64 else b[:64].hex() + f"… ({len(b)} bytes)"
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if hasattr(v, "fields"):  # VmStruct / VmSubsection
        out = {f.name: _plain(f.value) for f in v.fields}
        for sub in getattr(v, "subsections", ()):
            out[sub.name] = _plain(sub)
        return out
    return v


def _decode_devices(sections: list[dict], bodies: list[tuple[dict, bytes]], vmdesc: bytes | None) -> None:
    """Field by field, from the stream's own VMDESCRIPTION; say so where it cannot be done."""
    from wireformat import vmstate

    devices = None
    if vmdesc is not None:
        try:
            devices = vmstate.parse_vmdescription(vmdesc)
        except vmstate.VmstateDecodeError:
            devices = None
    budget = DecodeBudget()  # one for every body: what is printed is bounded too
    for sec, body in bodies:
        desc = devices.find(sec["idstr"], sec["instance_id"]) if devices is not None else None
        if desc is None:
            sec["decoded"] = "no description: content not decoded"
            continue
        if budget.left == 0:
            sec["decoded"] = f"not decoded: the budget of {budget.limit} decoded elements is spent"
            continue
        try:
            dec = vmstate.decode_body(desc, body, budget=budget)
        except vmstate.VmstateDecodeError as e:
            sec["decoded"] = f"does not decode with its description: {e}"
            continue
        sec["decoded"] = "yes" if dec.consumed == len(body) else f"description covers {dec.consumed} of {len(body)} bytes"
        sec["fields"] = {f.name: _plain(f.value) for f in dec.fields}
        for sub in dec.subsections:
            sec["fields"][sub.name] = _plain(sub)


def dump_stream(src: BinaryIO, *, commands: CommandSet = RELEASED, name: str = "<stream>", body_sizer=None,
                fields: bool = False) -> dict:
    out: dict = {"source": name, "header": None, "configuration": None, "sections": [], "commands": [],
                 "ram": {"blocks": {}, "records": {}}, "eof": None, "vmdescription": None, "trailing": None,
                 "error": None}
    pages: dict[str, Counter] = defaultdict(Counter)
    other = Counter()
    last_block: dict[str, str] = {}
    section_by_id: dict[int, dict] = {}
    cur = None
    bodies: list[tuple[dict, bytes]] = []
    kept = 0
    vmdesc = None
    reader = StreamReader(src, commands=commands, body_sizer=body_sizer)
    try:
        for rec in reader:
            t = type(rec)
            # counted: RAM pages per block, section parts and bytes
            if t is RamRun:
                pages[last_block.get(rec.channel, "?")]["page" if rec.flags & 0x8 else "zero"] += rec.count
            elif t is RamRecord:
                kind = rec.flags & ~0x20
                label = _KIND.get(kind)
                if label is not None:
                    if rec.block is not None:
                        last_block[rec.channel] = rec.block
                    pages[last_block.get(rec.channel, "?")][label] += 1
                elif kind == F.RAM_SAVE_FLAG_MEM_SIZE:
                    for b in rec.blocks:
                        info = b.summary()
                        out["ram"]["blocks"].setdefault(b.name, {"used_length": info.pop("used_length")}).update(info)
                    other["mem_size"] += 1
                else:
                    other[F(kind).name.removeprefix("RAM_SAVE_FLAG_").lower()] += 1
            elif t is SectionHeader:
                if rec.is_full:
                    cur = {**rec.summary(), "parts": 0, "bytes": 0}
                    out["sections"].append(cur)
                    section_by_id[rec.section_id] = cur
                else:
                    cur = section_by_id.get(rec.section_id)
                    if cur is not None:
                        cur["parts"] += 1
            elif t is DeviceState:
                if cur is not None:
                    cur["bytes"] += len(rec.data)
                    if fields and cur["type"] == "SECTION_FULL" and kept + len(rec.data) <= MAX_KEPT_BODIES:
                        bodies.append((cur, rec.data))
                        kept += len(rec.data)
            # shown as the records say
            elif t is Command:
                out["commands"].append(rec.summary(commands.name(rec.cmd)))
            elif t in _ONE_OF:
                out[_ONE_OF[t]] = rec.summary()
            elif t is Eof:
                if rec.depth == 0:
                    out["eof"] = rec.offset
            elif t is VmDescription:
                vmdesc = rec.json if rec.complete else None
                out["vmdescription"] = rec.summary()
                try:
                    desc = parse_vmdescription(rec.json)
                    out["vmdescription"]["devices"] = len(desc.devices)
                    out["vmdescription"]["page_size"] = desc.page_size
                except VmstateDecodeError as e:
                    out["vmdescription"]["devices"] = None
                    out["vmdescription"]["malformed"] = e.message
    except DecodeError as e:
        out["error"] = str(e)
    for blk, counts in pages.items():
        out["ram"]["blocks"].setdefault(blk, {}).update(counts)
    out["ram"]["records"] = dict(other)
    if fields:
        _decode_devices(out["sections"], bodies, vmdesc)
    out["bytes"] = reader.b.offset()
    return out


FIELD_TEXT = 100  # characters of a field's value on a text line; --json gives the value whole


def _clip(text: str, limit: int = FIELD_TEXT) -> str:
    """A value's text cut to `limit`, saying it was cut and how long it is."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({limit} of {len(text)} characters shown)"


def format_dump(d: dict) -> str:
    lines = [f"{d['source']}: {d['bytes']} bytes"]
    h = d["header"]
    if h and h["magic"] != f"{QEMU_VM_FILE_MAGIC:#010x}":  # its "version" would be the next 4 bytes of anything
        lines.append(f"header      magic {h['magic']}: not a migration stream (QEMU writes {QEMU_VM_FILE_MAGIC:#010x})")
    elif h:
        lines.append(f"header      magic {h['magic']} version {h['version']}")
    c = d["configuration"]
    if c:
        caps = ", ".join(c["capabilities"]) or "none"
        lines.append(f"machine     {c['machine_type']}  (validated capabilities: {caps}{', uuid ' + c['uuid'] if c['uuid'] else ''})")
    lines.append("")
    lines.append("RAM blocks:")
    lines.append(f"  {'block':<28} {'length':>12} {'pages':>9} {'zero':>9} {'xbzrle':>7}")
    for name, b in d["ram"]["blocks"].items():
        ln = b.get("used_length")
        pages = b["mapped_ram"]["pages_present"] if "mapped_ram" in b else b.get("page", 0)
        lines.append(f"  {name:<28} {('%#x' % ln) if ln is not None else '?':>12} {pages:>9} {b.get('zero', 0):>9} {b.get('xbzrle', 0):>7}"
                     + ("  (mapped-ram: pages in place, zero pages are holes)" if "mapped_ram" in b else ""))
    if d["ram"]["records"]:
        lines.append("  other records: " + ", ".join(f"{k} {v}" for k, v in sorted(d["ram"]["records"].items())))
    lines.append("")
    lines.append(f"sections ({len(d['sections'])}):")
    lines.append(f"  {'offset':>10} {'type':<6} {'id':>4}  {'idstr':<32} {'inst':>4} {'ver':>4} {'parts':>5} {'bytes':>8}")
    for s in d["sections"]:
        lines.append(f"  {s['offset']:>10} {s['type'].removeprefix('SECTION_'):<6} {s['section_id']:>4}  {s['idstr']:<32} "
                     f"{s['instance_id']:>4} {s['version_id']:>4} {s['parts']:>5} {s['bytes']:>8}")
        if "fields" in s:
            for k, v in s["fields"].items():
                lines.append(f"{'':>16}{k} = {_clip(json.dumps(v))}")
        elif s.get("decoded") and s["decoded"] != "yes":
            lines.append(f"{'':>16}({s['decoded']})")
    if d["commands"]:
        lines.append("")
        lines.append("commands:")
        for cmd in d["commands"]:
            args = "" if not cmd["args"] else " " + json.dumps(cmd["args"])
            lines.append(f"  {cmd['offset']:>10} {'  ' * cmd['depth']}{cmd['name']} (len {cmd['len']}){args}")
    lines.append("")
    lines.append(f"EOF at {d['eof']}" if d["eof"] is not None else "no EOF")
    v = d["vmdescription"]
    lines.append(f"VMDESCRIPTION at {v['offset']}: {v['length']} bytes, {v.get('devices')} devices" if v else "no VMDESCRIPTION")
    if v and v.get("malformed"):
        lines.append(f"VMDESCRIPTION malformed: {v['malformed']}")
    if d["trailing"]:
        lines.append(f"trailing data at {d['trailing']['offset']}: {d['trailing']['length']} bytes")
    if d["error"]:
        lines.append(f"decoding stopped: {d['error']}")
    return "\n".join(lines)


MULTIFD_HEAD = b"\x11\x22\x33\x44"  # MULTIFD_MAGIC, first in every multifd channel


def dump_channel(src: BinaryIO, *, name: str = "<channel>") -> dict:
    """A multifd channel file: its initial packet, packets by kind, pages per block, where
    decoding stopped."""
    from wireformat.multifd import MultifdChannelReader, MultifdDeviceStatePacket, MultifdInit, MultifdRamPacket

    out: dict = {"source": name, "kind": "multifd channel", "init": None, "packets": 0, "syncs": 0,
                 "device_state": 0, "layout": None, "packet_nums": None, "blocks": {}, "error": None}
    reader = MultifdChannelReader(src, "multifd")
    blocks: dict[str, Counter] = defaultdict(Counter)
    lo = hi = None
    try:
        for rec in reader:
            if isinstance(rec, MultifdInit):
                out["init"] = {"id": rec.id, "uuid": rec.uuid.hex(), "magic": f"{rec.magic:#x}", "version": rec.version}
            elif isinstance(rec, MultifdRamPacket):
                out["packets"] += 1
                out["syncs"] += rec.is_sync
                out["layout"] = rec.layout
                lo = rec.packet_num if lo is None else min(lo, rec.packet_num)
                hi = rec.packet_num if hi is None else max(hi, rec.packet_num)
                if rec.normal_pages or rec.zero_pages:
                    blocks[rec.ramblock]["page"] += rec.normal_pages
                    blocks[rec.ramblock]["zero"] += rec.zero_pages or 0
            elif isinstance(rec, MultifdDeviceStatePacket):
                out["packets"] += 1
                out["device_state"] += 1
    except DecodeError as e:
        out["error"] = str(e)
    out["packet_nums"] = None if lo is None else [lo, hi]
    out["blocks"] = {k: dict(v) for k, v in blocks.items()}
    out["bytes"] = reader.w.offset()
    return out


def format_channel(d: dict) -> str:
    lines = [f"{d['source']}: {d['bytes']} bytes, multifd channel"]
    i = d["init"]
    if i:
        lines.append(f"init        id {i['id']}  uuid {i['uuid']}  magic {i['magic']} version {i['version']}")
    nums = d["packet_nums"]
    lines.append(f"packets     {d['packets']} ({d['syncs']} SYNC, {d['device_state']} device state; layout {d['layout'] or '?'}"
                 + (f"; packet_num {nums[0]}..{nums[1]}" if nums else "") + ")")
    for blk, c in d["blocks"].items():
        lines.append(f"  {blk:<28} {c.get('page', 0):>9} pages {c.get('zero', 0):>9} zero")
    if d["error"]:
        lines.append(f"decoding stopped: {d['error']}")
    return "\n".join(lines)
