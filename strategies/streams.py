"""Whole, valid precopy streams as a conforming QEMU source writes them.

A generated stream is a list of records plus its bytes; every one builds with
wireformat and the reference Loader finds nothing wrong with it for the versions in
`targets`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from hypothesis import strategies as st

from wireformat.constants import MigCmd, RamSaveFlag as F, SectionType as T
from wireformat.mainstream import build_record
from wireformat.records import (
    Command,
    ConfigSubsection,
    Configuration,
    DeviceState,
    Eof,
    FileHeader,
    RamBlockInfo,
    RamRecord,
    Record,
    SectionFooter,
    SectionHeader,
    VmDescription,
)

from conformance.rules import compat
from conformance.versions import FACTS

from .records import machine_types

PAGE_SIZE = 4096
CONT = int(F.RAM_SAVE_FLAG_CONTINUE)
ZERO = int(F.RAM_SAVE_FLAG_ZERO)
PAGE = int(F.RAM_SAVE_FLAG_PAGE)
EOS = int(F.RAM_SAVE_FLAG_EOS)
FLUSH = int(F.RAM_SAVE_FLAG_MULTIFD_FLUSH)
FOOTER_BYTE = 0x7E
_versioned = re.compile(r"pc-(i440fx|q35)-\d+\.\d+(\.\d+)?").fullmatch  # a machine type a release has or lacks

device_names = st.sampled_from(["timer", "cpu_common", "cpu", "apic", "fw_cfg", "0000:00:01.1/ide", "i8259", "globalstate", "hpet"])


@dataclass
class GeneratedStream:
    records: list[Record]
    data: bytes
    targets: frozenset[str]  # destination versions that accept it
    ram_params: dict

    @property
    def blocks(self) -> dict[str, int]:
        for r in self.records:
            if isinstance(r, RamRecord) and r.blocks:
                return {b.name: b.used_length for b in r.blocks}
        return {}


def _page_records(draw, blocks: list[RamBlockInfo], last: dict, max_pages: int) -> list[RamRecord]:
    out = []
    for _ in range(draw(st.integers(0, max_pages))):
        blk = draw(st.sampled_from(blocks))
        addr = draw(st.integers(0, blk.used_length // PAGE_SIZE - 1)) * PAGE_SIZE
        same = last.get("block") == blk.name
        flags_cont = CONT if same else 0
        name = None if same else blk.name
        last["block"] = blk.name
        if draw(st.booleans()):
            out.append(RamRecord(addr=addr, flags=ZERO | flags_cont, block=name, fill=0))
        else:
            data = draw(st.binary(min_size=16, max_size=16)) * (PAGE_SIZE // 16)
            out.append(RamRecord(addr=addr, flags=PAGE | flags_cont, block=name, data=data))
    return out


@st.composite
def precopy_streams(draw, *, allow_10_0_only: bool = True, max_parts: int = 4, max_pages: int = 12) -> GeneratedStream:
    targets = set(FACTS)  # every modelled version; those a part of the stream excludes are dropped
    recs: list[Record] = [FileHeader(magic=0x5145564D, version=3)]
    caps = draw(st.sampled_from([[], ["x-ignore-shared"]]))
    subs = [ConfigSubsection(name="configuration/capabilities", version_id=1, value=caps)] if caps else []
    machine = draw(machine_types)
    # a destination cannot even start with a versioned machine type its release lacks
    targets -= {v for v in FACTS if _versioned(machine) and machine not in compat.machine_types(v)}
    recs.append(Configuration(machine_type=machine, subsections=subs))
    if draw(st.booleans()):
        recs.append(Command(cmd=MigCmd.MIG_CMD_OPEN_RETURN_PATH, data=b"", args={}))
        recs.append(Command(cmd=MigCmd.MIG_CMD_PING, data=(1).to_bytes(4, "big"), args={"value": 1}))

    ids = iter(draw(st.lists(st.integers(0, 2**31), min_size=20, max_size=20, unique=True)))
    ram_id = next(ids)
    nblocks = draw(st.integers(1, 4))
    names = draw(st.lists(st.sampled_from(["pc.ram", "pc.bios", "pc.rom", "/rom@etc/acpi/tables", "vga.vram", "/rom@etc/acpi/rsdp"]),
                          min_size=nblocks, max_size=nblocks, unique=True))
    blocks = [RamBlockInfo(name=n, used_length=draw(st.integers(1, 64)) * PAGE_SIZE,
                           mr_addr=draw(st.integers(0, 2**32)) * PAGE_SIZE if caps else None) for n in names]
    flush = allow_10_0_only and draw(st.booleans())  # 8.1+ per-round multifd flush records
    if flush:
        targets -= {v for v, m in FACTS.items() if not m.multifd_flush_understood}

    def section(t, sid, body, idstr=None, version=None, instance=0):
        if t in (T.QEMU_VM_SECTION_START, T.QEMU_VM_SECTION_FULL):
            h = SectionHeader(section_type=t, section_id=sid, idstr=idstr, instance_id=instance, version_id=version)
        else:
            h = SectionHeader(section_type=t, section_id=sid)
        return [h, *body, SectionFooter(section_id=sid)]

    last: dict = {}
    start = [RamRecord(addr=sum(b.used_length for b in blocks), flags=int(F.RAM_SAVE_FLAG_MEM_SIZE), blocks=blocks)]
    if flush:
        start.append(RamRecord(addr=0, flags=FLUSH))
    recs += section(T.QEMU_VM_SECTION_START, ram_id, start + [RamRecord(addr=0, flags=EOS)], "ram", 4)
    for _ in range(draw(st.integers(0, max_parts))):
        body = _page_records(draw, blocks, last, max_pages)
        if flush and draw(st.booleans()):
            body.append(RamRecord(addr=0, flags=FLUSH))
        recs += section(T.QEMU_VM_SECTION_PART, ram_id, body + [RamRecord(addr=0, flags=EOS)])
    if allow_10_0_only and draw(st.booleans()):
        recs.append(Command(cmd=MigCmd.MIG_CMD_SWITCHOVER_START, data=b"", args={}))
        targets -= {v for v, m in FACTS.items() if m.mig_cmd_max <= MigCmd.MIG_CMD_SWITCHOVER_START}
    recs += section(T.QEMU_VM_SECTION_END, ram_id, _page_records(draw, blocks, last, max_pages) + [RamRecord(addr=0, flags=EOS)])

    devices = draw(st.lists(st.tuples(device_names, st.integers(0, 2)), max_size=6, unique=True))
    described = []
    for idstr, inst in devices:
        # a device body is opaque here; keep the footer byte out so it frames unambiguously
        body = draw(st.binary(max_size=64)).replace(bytes([FOOTER_BYTE]), b"\x00")
        sid = next(ids)
        recs += section(T.QEMU_VM_SECTION_FULL, sid, [DeviceState(section_id=sid, idstr=idstr, data=body)], idstr,
                        draw(st.integers(1, 5)), inst)
        described.append({"name": idstr, "instance_id": inst, "size": len(body),
                          "fields": [{"name": "data", "size": len(body), "type": "buffer"}]})
    recs.append(Eof())
    desc = {"page_size": PAGE_SIZE, "devices": described}
    recs.append(VmDescription(json=json.dumps(desc, separators=(", ", ": ")).encode()))

    params = {"page_size": PAGE_SIZE, "ignore_shared": bool(caps), "mapped_ram": False, "postcopy_advised": False}
    data = b"".join(build_record(r, **params) for r in recs)
    return GeneratedStream(recs, data, frozenset(targets), params)
