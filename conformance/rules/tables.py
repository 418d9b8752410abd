"""What the destination has registered: the entries a section header must match.

A real destination looks each START/FULL header up in its own SaveStateEntry list (idstr
and instance id), refuses a version newer than the entry's, and a vmstate version below
the VMSD's minimum. We learn those tables from what the destination binary itself says:

* a reference stream saved by the destination binary with the same machine type and
  devices: its section headers are the entries it registers, with their current versions;
* its `-dump-vmstate` JSON: version and minimum_version_id per VMSD — but only for
  devices with a class-level VMSD (timer, cpu, apic … are missing from it), so a name it
  does not list is not evidence that the destination lacks the section.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import BinaryIO

from wireformat import vmstate
from wireformat.reader import StreamReader
from wireformat.constants import RamSaveFlag
from wireformat.records import RamRecord, SectionHeader

from conformance.rules.catalogue import Code

# RAMBlocks QEMU creates resizable (ACPI blobs grow with the configuration): a different
# used_length is accepted up to the block's maximum, which no stream tells.
RESIZABLE_PREFIX = "/rom@etc/"


@dataclass
class Finding:
    code: Code
    message: str


@dataclass
class DestinationTables:
    entries: dict[tuple[str, int], int] = field(default_factory=dict)  # (idstr, instance) -> version
    dump: vmstate.DumpVmstate | None = None
    ram_blocks: dict[str, int] = field(default_factory=dict)  # name -> used_length
    # the destination's own VMSD layouts (rules.device_state.Layouts): device bodies are read by them
    device_layouts: object = None

    @classmethod
    def from_reference_stream(cls, src: BinaryIO, dump: vmstate.DumpVmstate | None = None) -> "DestinationTables":
        entries, blocks = {}, {}
        try:
            for rec in StreamReader(src):
                if isinstance(rec, SectionHeader) and rec.is_full:
                    entries[(rec.idstr, rec.instance_id)] = rec.version_id
                elif isinstance(rec, RamRecord) and rec.ram_flag == RamSaveFlag.RAM_SAVE_FLAG_MEM_SIZE and not blocks:
                    blocks = {b.name: b.used_length for b in rec.blocks}
        except ValueError:
            pass  # a reference cut short still lists the entries it reached
        return cls(entries, dump, blocks)

    def judge_block(self, name: str, used_length: int) -> Finding | None:
        """A MEM_SIZE entry against the destination's RAMBlocks (its own, from a reference
        stream; else the blocks every destination has: rules.value_rules)."""
        from conformance.rules import value_rules

        if not self.ram_blocks:
            f = value_rules.judge_ram_block(name, used_length)
            return Finding(f.code, f.message) if f is not None else None
        local = self.ram_blocks.get(name)
        if local is None:
            return Finding(Code.RAM_BLOCK_UNKNOWN, f'Unknown ramblock "{name}", cannot accept migration')
        if name.startswith(RESIZABLE_PREFIX) and name not in value_rules.ram_blocks():
            return None  # resizeable, its max_length not known
        f = value_rules.judge_ram_block(name, used_length, local)
        return Finding(f.code, f.message) if f is not None else None

    def judge(self, idstr: str, instance_id: int, version_id: int) -> Finding | None:
        from conformance.rules import value_rules

        if self.entries:
            local = self.entries.get((idstr, instance_id))
            if local is None and instance_id == value_rules.INSTANCE_ANY and not value_rules.aliases(idstr):
                # find_se: 0xffffffff is the alias of every entry registered without one
                local = next((v for (i, _), v in self.entries.items() if i == idstr), None)
            if local is None:
                return Finding(Code.UNKNOWN_SECTION,
                               f"Unknown savevm section or instance '{idstr}' {instance_id}. Make sure that your current VM "
                               "setup matches your saved VM setup, including any hotplugged devices")
            if version_id > local:
                return Finding(Code.SECTION_VERSION_TOO_NEW, f"savevm: unsupported version {version_id} for '{idstr}' v{local}")
        info = self.dump.lookup_idstr(idstr) if self.dump is not None else None
        if info is not None:
            if not self.entries and version_id > max(v.version_id for v in (info, *info.alternatives)):
                return Finding(Code.SECTION_VERSION_TOO_NEW, f"savevm: unsupported version {version_id} for '{idstr}' v{info.version_id}")
            if version_id < min(v.minimum_version_id for v in (info, *info.alternatives)):
                return Finding(Code.SECTION_VERSION_TOO_OLD,
                               f"{idstr}: incoming version_id {version_id} is too old for local minimum version_id "
                               f"{info.minimum_version_id}")
        return None


# The sections a destination registers outside of device classes (so -dump-vmstate does not
# list them), with their version bounds and instance ids, per version: rules/value_rules.py
# (data/value-rules.json, read from QEMU's sources and checked on the real binaries).


@dataclass
class BuiltinTables(DestinationTables):
    """What every destination of a QEMU version has, whatever its machine and devices: the
    VMSDs of its device classes with their versions (from the binary's -dump-vmstate,
    shipped in compact form for the modelled versions) and the sections it registers
    outside device classes. A section neither names is one the destination cannot have; a
    version outside a VMSD's bounds is one it cannot load."""

    version: str = ""
    vmsd: dict = field(default_factory=dict)  # vmsd name -> [(version_id, minimum_version_id), ...]

    def judge(self, idstr: str, instance_id: int, version_id: int) -> Finding | None:
        from conformance.rules import value_rules

        for name in vmstate.vmsd_name_candidates(idstr):
            bounds = self.vmsd.get(name)
            if bounds is not None:
                f = value_rules.judge_instance(idstr, instance_id)  # savevm.c finds the entry first
                if f is not None:
                    return Finding(f.code, f.message)
                if any(lo <= version_id <= hi for hi, lo in bounds):
                    return None
                newest = max(hi for hi, _ in bounds)
                if version_id > newest:
                    return Finding(Code.SECTION_VERSION_TOO_NEW, f"savevm: unsupported version {version_id} for '{idstr}' v{newest}")
                oldest = min(lo for _, lo in bounds)
                return Finding(Code.SECTION_VERSION_TOO_OLD,
                               f"{name}: incoming version_id {version_id} is too old for local minimum version_id  {oldest}")
        others = value_rules.sections(self.version)
        name = next((c for c in vmstate.vmsd_name_candidates(idstr) if c in others or c.endswith("vfio")), None)
        if name is None:
            return Finding(Code.UNKNOWN_SECTION,
                           f"Unknown savevm section or instance '{idstr}' {instance_id}: QEMU {self.version} has no such "
                           "device or section")
        row = others.get(name) or others.get("vfio")
        f = value_rules.judge_other_section(row, idstr, instance_id, version_id) if row is not None else None
        return Finding(f.code, f.message) if f is not None else None


def builtin_tables(version: str) -> BuiltinTables | None:
    import json
    from importlib import resources

    res = resources.files("conformance.rules") / "data" / f"vmsd-versions-{version}.json"
    if not res.is_file():
        return None
    table = json.loads(res.read_text())["vmsd"]
    from conformance.rules.device_state import builtin_layouts

    return BuiltinTables(version=version, vmsd={k: [tuple(b) for b in v] for k, v in table.items()},
                         device_layouts=builtin_layouts(version))
