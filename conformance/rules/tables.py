"""What the destination has registered: the entries a section header must match.

A real destination looks each START/FULL header up in its own SaveStateEntry list (idstr
and instance id), refuses a version newer than the entry's, and a vmstate version below
the VMSD's minimum. We learn those tables from what the destination binary itself says:

* a reference stream saved by the destination binary with the same machine type and
  devices: its section headers are the entries it registers, with their current versions;
* its `-dump-vmstate` JSON: version and minimum_version_id per VMSD of every device class
  of the binary (whatever the machine) — but not the sections registered outside device
  classes (timer, cpu, apic, ram, block …): a device VMSD it does not list is one the
  destination lacks; a name of the other kind is judged by the built-in rules.

Given with the built-in tables of the target version (the default), these REFINE them
(RefinedTables): what the dump or reference says overrides, what they cannot say stays.
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

    def judge_counted(self, headers: list[dict]) -> list[tuple[dict, Finding]]:
        """Instance ids judged against the stream's own count of a section (BuiltinTables;
        a reference stream lists its entries exactly)."""
        return []


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

    def judge_counted(self, headers: list[dict]) -> list[tuple[dict, Finding]]:
        from conformance.rules import value_rules

        def device(idstr: str) -> bool:  # a device class of the dump (a section QEMU registers outside: its row)
            return any(name in self.vmsd for name in vmstate.vmsd_name_candidates(idstr))

        return [(h, Finding(f.code, f.message)) for h, f in value_rules.judge_counted(self.version, headers, device)]


# A real -dump-vmstate lists the VMSD of every device class of the binary (several hundred);
# a dump naming fewer than this share of the VMSDs the shipped tables know is told as partial.
PARTIAL_DUMP_SHARE = 0.5


def _same_declaration(desc, shapes: dict, ref: str, seen: dict) -> bool:
    """Whether a -dump-vmstate Description declares what the shipped layout shape `ref`
    does: name, versions, fields (name, version, size, field_exists gate, count where both
    give one, nested VMSD) and subsections, in order."""
    key = (id(desc), ref)
    if key in seen:
        return seen[key]
    s = shapes.get(ref)
    ok = isinstance(desc, dict) and s is not None and \
        (desc.get("name"), desc.get("version_id"), desc.get("minimum_version_id")) == (s["n"], s["v"], s["m"])
    fields, subs = (desc.get("Fields", []), desc.get("Subsections", [])) if ok else ([], [])
    ok = ok and isinstance(fields, list) and isinstance(subs, list) and len(fields) == len(s["f"]) \
        and len(subs) == len(s["s"])
    for a, b in zip(fields, s["f"]) if ok else ():
        ok = isinstance(a, dict) and (a.get("field"), a.get("version_id"), a.get("size"), bool(a.get("field_exists"))) \
            == (b["n"], b["v"], b["s"], bool(b.get("x"))) and not ("num" in a and "num" in b and a["num"] != b["num"]) \
            and ("Description" in a) == ("d" in b) \
            and ("d" not in b or _same_declaration(a["Description"], shapes, b["d"], seen))
        if not ok:
            break
    ok = ok and all(_same_declaration(a, shapes, b, seen) for a, b in zip(subs, s["s"]))
    seen[key] = ok
    return ok


def refine_layouts(layouts, dump_json: dict | None):
    """The shipped layouts of a version, refined by a destination's own -dump-vmstate: a VMSD
    the dump declares otherwise than the shipped layout (another build, another version) is
    not read by the shipped layout (its sections are "no layout", never judged by a wrong
    one); the rest, and the VMSDs outside device classes, stay. (layouts, [dropped names])"""
    if layouts is None or not isinstance(dump_json, dict):
        return layouts, []
    from dataclasses import replace

    by_name: dict[str, list] = {}
    for type_name, entry in dump_json.items():
        desc = entry.get("Description") if isinstance(entry, dict) and type_name != "vmschkmachine" else None
        if isinstance(desc, dict) and isinstance(desc.get("name"), str):
            by_name.setdefault(desc["name"], []).append(desc)
    tops, dropped, seen = {}, [], {}
    for name, variants in layouts.tops.items():
        descs = by_name.get(name)
        if descs is None:
            tops[name] = variants  # not described by the dump: the shipped layout stays
            continue
        kept = [v for v in variants if any(_same_declaration(d, layouts.shapes, v["ref"], seen) for d in descs)]
        if all(any(_same_declaration(d, layouts.shapes, v["ref"], seen) for v in variants) for d in descs):
            tops[name] = kept
        else:
            dropped.append(name)
    return replace(layouts, tops=tops), dropped


@dataclass
class RefinedTables(BuiltinTables):
    """The built-in tables of the target version, refined by what the user gives of the
    destination itself: its -dump-vmstate (VMSD versions and minimum versions, its VMSD list,
    its declarations) and/or a stream it saved (the section entries it registers, its RAM
    blocks). What neither can express -- the sections registered outside device classes with
    their version bounds and instance ids, the value rules, the RAM block rules -- stays
    from the built-in data (rules/data)."""

    dropped_layouts: list = field(default_factory=list)  # VMSDs the dump declares otherwise

    def _dump_finding(self, idstr: str, instance_id: int, version_id: int) -> Finding | None:
        from conformance.rules import value_rules

        info = self.dump.lookup_idstr(idstr)
        if info is None:
            others = value_rules.sections(self.version)
            if any(c in others or c.endswith("vfio") for c in vmstate.vmsd_name_candidates(idstr)):
                return BuiltinTables.judge(self, idstr, instance_id, version_id)
            # a real -dump-vmstate lists the VMSD of every device class: absent is unknown
            partial = ""
            if self.vmsd and len(self.dump) < PARTIAL_DUMP_SHARE * len(self.vmsd):
                partial = (f"; the dump lists only {len(self.dump)} VMSDs, a real -dump-vmstate of QEMU "
                           f"{self.version} lists {len(self.vmsd)}: is it the whole dump?")
            return Finding(Code.UNKNOWN_SECTION,
                           f"Unknown savevm section or instance '{idstr}' {instance_id}: the destination's "
                           f"-dump-vmstate has no such VMSD{partial}")
        f = value_rules.judge_instance(idstr, instance_id)  # savevm.c finds the entry first
        if f is not None:
            return Finding(f.code, f.message)
        variants = (info, *info.alternatives)
        newest = max(v.version_id for v in variants)
        if version_id > newest:
            return Finding(Code.SECTION_VERSION_TOO_NEW, f"savevm: unsupported version {version_id} for '{idstr}' v{newest}")
        oldest = min(v.minimum_version_id for v in variants)
        if version_id < oldest:
            return Finding(Code.SECTION_VERSION_TOO_OLD,
                           f"{idstr}: incoming version_id {version_id} is too old for local minimum version_id {oldest}")
        return None

    def judge(self, idstr: str, instance_id: int, version_id: int) -> Finding | None:
        without_reference = (self._dump_finding(idstr, instance_id, version_id) if self.dump is not None
                             else BuiltinTables.judge(self, idstr, instance_id, version_id))
        if not self.entries:
            return without_reference
        # the reference lists the entries this destination registers, with their versions:
        # it decides which sections and instances exist and how new they may be; the minimum
        # versions, which no stream shows, stay from the dump or the built-in tables
        found = DestinationTables(self.entries).judge(idstr, instance_id, version_id)
        if found is not None:
            return found
        if without_reference is not None and without_reference.code is Code.SECTION_VERSION_TOO_OLD:
            return without_reference
        return None


def refined_tables(version: str, dump: vmstate.DumpVmstate | None = None, dump_json: dict | None = None,
                   reference: "DestinationTables | None" = None) -> RefinedTables | None:
    """The built-in tables of `version` refined by a destination's -dump-vmstate (parsed,
    and its JSON) and/or the tables of a reference stream it saved (None: no built-in data
    for `version`)."""
    base = builtin_tables(version)
    if base is None:
        return None
    layouts, dropped = refine_layouts(base.device_layouts, dump_json)
    return RefinedTables(entries=dict(reference.entries) if reference is not None else {}, dump=dump,
                         ram_blocks=dict(reference.ram_blocks) if reference is not None else {},
                         device_layouts=layouts, version=version, vmsd=base.vmsd, dropped_layouts=dropped)


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
