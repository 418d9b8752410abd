"""Main-stream framing: file header, CONFIGURATION, section headers and footers,
EOF and the VMDESCRIPTION trailer (QEMU migration/savevm.c), plus `build_record`, the
inverse of the reader for every record type.
"""

from __future__ import annotations

from construct import (
    Bytes,
    Const,
    Error,
    GreedyBytes,
    GreedyRange,
    Int32ub,
    PascalString,
    Prefixed,
    PrefixedArray,
    Struct,
    Switch,
    this,
)

from . import ram
from .commands import build_command
from .constants import (
    SUBSECTION_CAPABILITIES,
    SUBSECTION_TARGET_PAGE_BITS,
    SUBSECTION_UUID,
    SectionType as T,
)
from .primitives import CountedString
from .records import (
    Command,
    ConfigSubsection,
    Configuration,
    DeviceState,
    Eof,
    FileHeader,
    PackageEnd,
    RamRecord,
    RamRun,
    Record,
    SectionFooter,
    SectionHeader,
    TrailingData,
    VmDescription,
)

FileHeaderStruct = Struct("magic" / Int32ub, "version" / Int32ub)

ConfigSubsectionStruct = Struct(
    Const(bytes([T.QEMU_VM_SUBSECTION])),
    "name" / CountedString,
    "version_id" / Int32ub,
    "value"
    / Switch(
        this.name,
        {
            SUBSECTION_TARGET_PAGE_BITS: Int32ub,
            SUBSECTION_CAPABILITIES: PrefixedArray(Int32ub, CountedString),
            SUBSECTION_UUID: Bytes(16),
        },
        default=Error,
    ),
)

# Body of QEMU_VM_CONFIGURATION (after the type byte). The vmstate is loaded with
# version 0, so no version travels; subsections follow while the next byte is 0x05.
ConfigurationStruct = Struct(
    "machine_type" / PascalString(Int32ub, "latin-1"),
    "subsections" / GreedyRange(ConfigSubsectionStruct),
)

FullSectionHeaderStruct = Struct(
    "section_id" / Int32ub,
    "idstr" / CountedString,
    "instance_id" / Int32ub,
    "version_id" / Int32ub,
)
ShortSectionHeaderStruct = Struct("section_id" / Int32ub)
SectionFooterStruct = Struct(Const(bytes([T.QEMU_VM_SECTION_FOOTER])), "section_id" / Int32ub)
VmDescriptionStruct = Struct(Const(bytes([T.QEMU_VM_VMDESCRIPTION])), "json" / Prefixed(Int32ub, GreedyBytes))


def configuration_from_container(c, offset=0, channel="main") -> Configuration:
    subs = [ConfigSubsection(name=s.name, version_id=s.version_id, value=list(s.value) if s.name == SUBSECTION_CAPABILITIES else s.value) for s in c.subsections]
    return Configuration(offset=offset, channel=channel, machine_type=c.machine_type, subsections=subs)


def build_record(rec: Record, **ram_params) -> bytes:
    """Bytes of one record exactly as on the wire (type byte included)."""
    match rec:
        case FileHeader():
            return FileHeaderStruct.build({"magic": rec.magic, "version": rec.version})
        case Configuration():
            subs = [{"name": s.name, "version_id": s.version_id, "value": s.value} for s in rec.subsections]
            return bytes([T.QEMU_VM_CONFIGURATION]) + ConfigurationStruct.build(
                {"machine_type": rec.machine_type, "subsections": subs}
            )
        case SectionHeader():
            if rec.is_full:
                body = FullSectionHeaderStruct.build(
                    {"section_id": rec.section_id, "idstr": rec.idstr, "instance_id": rec.instance_id, "version_id": rec.version_id}
                )
            else:
                body = ShortSectionHeaderStruct.build({"section_id": rec.section_id})
            return bytes([rec.section_type]) + body
        case SectionFooter():
            return SectionFooterStruct.build({"section_id": rec.section_id})
        case RamRecord():
            return ram.build_record(rec, **ram_params)
        case RamRun():
            return b"".join(ram.build_record(r, **ram_params) for r in rec.records())
        case DeviceState():
            return bytes(rec.data)
        case Eof():
            return bytes([T.QEMU_VM_EOF])
        case Command():
            return bytes([T.QEMU_VM_COMMAND]) + build_command(rec.cmd, bytes(rec.data))
        case PackageEnd():
            return b""
        case VmDescription():
            if not rec.complete:  # as it was on the wire: the announced length, then what came
                return bytes([T.QEMU_VM_VMDESCRIPTION]) + rec.announced.to_bytes(4, "big") + rec.json
            return VmDescriptionStruct.build({"json": rec.json})
        case TrailingData():
            raise ValueError("trailing data is summarised, not kept: it cannot be rebuilt")
    raise TypeError(f"cannot build {type(rec).__name__}")
