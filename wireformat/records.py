"""Typed records: what the reader yields and what the codecs build from.

Every record knows the channel it came from and the byte offset where it starts there.
Fields are the wire fields; nothing here is a judgement about whether they are allowed.
`summary()` gives a record as one line of plain data (JSON-ready, like scapy's mysummary):
what `migconform dump` shows of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .constants import MigCmd, RamSaveFlag, SectionType

MAIN = "main"


@dataclass(slots=True, kw_only=True)
class Record:
    offset: int = 0
    channel: str = MAIN
    # nesting depth inside MIG_CMD_PACKAGED data (0 = top level)
    depth: int = 0

    @property
    def kind(self) -> str:
        return type(self).__name__

    def summary(self) -> dict:
        """Where the record is; subclasses say what it holds."""
        return {"offset": self.offset}


@dataclass(slots=True, kw_only=True)
class FileHeader(Record):
    magic: int
    version: int

    def summary(self) -> dict:
        return {"magic": f"{self.magic:#010x}", "version": self.version}


@dataclass(slots=True, kw_only=True)
class ConfigSubsection:
    name: str
    version_id: int
    value: Any  # int (target page bits), list[str] (capabilities), bytes (uuid)


@dataclass(slots=True, kw_only=True)
class Configuration(Record):
    machine_type: str
    subsections: list[ConfigSubsection] = field(default_factory=list)

    def subsection(self, name: str) -> ConfigSubsection | None:
        return next((s for s in self.subsections if s.name == name), None)

    @property
    def capabilities(self) -> list[str]:
        sub = self.subsection("configuration/capabilities")
        return list(sub.value) if sub else []

    @property
    def uuid(self) -> bytes | None:
        sub = self.subsection("configuration/uuid")
        return sub.value if sub else None

    @property
    def page_size(self) -> int:
        """The target page size the stream's RAM records use (4096 without the subsection,
        or with a number of bits no target has)."""
        bits = self.subsection("configuration/target-page-bits")
        return 1 << bits.value if bits is not None and 9 <= bits.value <= 24 else 4096

    @property
    def mapped_ram(self) -> bool:
        """RAM laid out at fixed file offsets (the mapped-ram capability): no page records."""
        return "mapped-ram" in self.capabilities

    def summary(self) -> dict:
        uuid = self.uuid
        return {"machine_type": self.machine_type, "capabilities": self.capabilities,
                "uuid": uuid.hex() if uuid else None, "subsections": [s.name for s in self.subsections]}


@dataclass(slots=True, kw_only=True)
class SectionHeader(Record):
    section_type: int
    section_id: int
    # full headers (START, FULL) only; None for PART / END
    idstr: str | None = None
    instance_id: int | None = None
    version_id: int | None = None

    @property
    def is_full(self) -> bool:
        return self.section_type in (SectionType.QEMU_VM_SECTION_START, SectionType.QEMU_VM_SECTION_FULL)

    @property
    def type_name(self) -> str:
        return SectionType(self.section_type).name.removeprefix("QEMU_VM_")

    def summary(self) -> dict:
        out = {"type": self.type_name, "offset": self.offset, "section_id": self.section_id}
        if self.is_full:
            out.update(idstr=self.idstr, instance_id=self.instance_id, version_id=self.version_id)
        return out


@dataclass(slots=True, kw_only=True)
class SectionFooter(Record):
    section_id: int


@dataclass(slots=True, kw_only=True)
class DeviceState(Record):
    """The body of a non-RAM section, as raw bytes (decode with wireformat.vmstate)."""

    section_id: int
    idstr: str | None
    data: bytes
    # how the end was found: "description" (decoded by a VMSD) or "footer" (scanned)
    framed_by: str = "footer"
    decoded: Any = None


@dataclass(slots=True, kw_only=True)
class Eof(Record):
    pass


@dataclass(slots=True, kw_only=True)
class Command(Record):
    cmd: int
    data: bytes  # raw payload (exactly `len` bytes on the wire)
    args: Any = None  # decoded payload, or None when it does not decode

    @property
    def name(self) -> str:
        try:
            return MigCmd(self.cmd).name
        except ValueError:
            return f"MIG_CMD_0x{self.cmd:x}"

    def summary(self, name: str | None = None) -> dict:
        """`name`: the command's name where the id is not QEMU's (a proposed command)."""
        return {"offset": self.offset, "name": name or self.name, "len": len(self.data), "args": self.args,
                "depth": self.depth}


@dataclass(slots=True, kw_only=True)
class PackageEnd(Record):
    """End of the nested stream announced by MIG_CMD_PACKAGED (not a wire record)."""

    length: int


@dataclass(slots=True, kw_only=True)
class VmDescription(Record):
    json: bytes
    announced: int | None = None  # the be32 length; more than len(json) when the stream ends early

    @property
    def complete(self) -> bool:
        return self.announced is None or self.announced == len(self.json)

    def summary(self) -> dict:
        return {"offset": self.offset, "length": len(self.json)}


@dataclass(slots=True, kw_only=True)
class TrailingData(Record):
    """Bytes after the VMDESCRIPTION trailer (or after EOF when there is none)."""

    length: int
    head: bytes

    def summary(self) -> dict:
        return {"offset": self.offset, "length": self.length}


@dataclass(slots=True, kw_only=True)
class RamBlockInfo:
    name: str
    used_length: int
    page_size: int | None = None  # postcopy, huge-page backed blocks
    mr_addr: int | None = None  # x-ignore-shared
    mapped_ram: Any = None  # mapped-ram header (dict)

    def summary(self) -> dict:
        """The block's length, and the optional fields its MEM_SIZE entry carries."""
        out = {"used_length": self.used_length}
        out.update((k, v) for k, v in (("page_size", self.page_size), ("mr_addr", self.mr_addr),
                                       ("mapped_ram", self.mapped_ram)) if v is not None)
        return out


@dataclass(slots=True, kw_only=True)
class RamRecord(Record):
    """One record of the `ram` section payload."""

    addr: int  # page-aligned offset in the block, or total size for MEM_SIZE
    flags: int  # as on the wire, CONTINUE included
    block: str | None = None  # None when CONTINUE (or the record names no block)
    fill: int | None = None  # ZERO
    encoding: int | None = None  # XBZRLE
    data: Any = None  # PAGE bytes (memoryview on the fast path), XBZRLE / COMPRESS data
    blocks: list[RamBlockInfo] | None = None  # MEM_SIZE

    @property
    def ram_flag(self) -> int:
        return self.flags & ~RamSaveFlag.RAM_SAVE_FLAG_CONTINUE

    @property
    def continued(self) -> bool:
        return bool(self.flags & RamSaveFlag.RAM_SAVE_FLAG_CONTINUE)


@dataclass(slots=True, kw_only=True)
class RamRun(Record):
    """A run of consecutive CONTINUE records of one kind (PAGE or ZERO), as they lie in
    the stream: the reader's fast path. It is exactly the records `records()` returns;
    `region` (a memoryview, valid until the next record is read) holds their bytes."""

    flags: int  # PAGE|CONTINUE or ZERO|CONTINUE
    count: int
    stride: int  # bytes per record
    words: Any  # array('Q') of the record words (address | flags)
    region: Any
    page_size: int = 4096

    def addrs(self):
        mask = -self.page_size
        return [w & mask for w in self.words]

    def max_addr(self) -> int:
        return max(self.words) & -self.page_size if self.count else 0

    def records(self) -> list[RamRecord]:
        out, st, reg = [], self.stride, self.region
        zero = self.flags & 0x2 and not self.flags & 0x8
        for i, w in enumerate(self.words):
            base = i * st
            rec = RamRecord(offset=self.offset + base, channel=self.channel, depth=self.depth, addr=w & -self.page_size,
                            flags=w & (self.page_size - 1))
            if zero:
                rec.fill = reg[base + 8]
            else:
                rec.data = reg[base + 8 : base + st]
            out.append(rec)
        return out
