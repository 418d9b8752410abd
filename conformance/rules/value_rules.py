"""Checks a destination makes while or after loading, as data (rules/data/value-rules.json).

Three tables, per modelled version, each row with the QEMU source it was read from and
whether an edited real capture was loaded by the real binary (`verified`):

* sections QEMU registers outside device classes (not in -dump-vmstate): their version
  bounds (savevm.c refuses a version above the entry's; vmstate_load_state one below the
  VMSD's minimum; a live load function may accept one version only) and the instance ids
  the destination registers for them;
* instance ids of device sections a machine creates a fixed number of times (and every
  idstr carrying a device path, which is unique: instance 0);
* value rules on device bodies (VMSTATE_VALIDATE tests, post_load checks), read through
  the stream's own VMDESCRIPTION.

This module interprets the tables; it does no I/O beyond reading its own data file.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from conformance.rules.catalogue import Code

FORMAT = 1
ROM_BLOCK = 512  # kvmvapic's ROM_BLOCK_SIZE: rom_state_paddr is rounded down to it
# The loader keeps, for guest RAM below this address (where option ROMs live), the byte at
# offset 2 of every ROM block: the ROM size byte vapic_post_load reads (bounded: 2 KiB).
ROM_PROBE_LIMIT = 1 << 20


class RomProbe:
    """Byte 2 of each 512-byte block of the RAM block at guest address 0, below
    ROM_PROBE_LIMIT, as the main stream leaves it; a block whose page the main stream did not
    carry (sent on a multifd channel, or never) is not known."""

    def __init__(self, block: str = "pc.ram"):
        self.block = block
        self.bytes = bytearray(ROM_PROBE_LIMIT // ROM_BLOCK)
        self.seen = bytearray(ROM_PROBE_LIMIT // ROM_BLOCK)

    def page(self, addr: int, data=None, fill: int | None = None, page_size: int = 4096) -> None:
        if addr >= ROM_PROBE_LIMIT:
            return
        for k in range(page_size // ROM_BLOCK):
            i = (addr + k * ROM_BLOCK) // ROM_BLOCK
            if i < len(self.bytes):
                self.bytes[i] = fill if data is None else (data[k * ROM_BLOCK + 2] if len(data) > k * ROM_BLOCK + 2 else 0)
                self.seen[i] = 1

    def size_byte(self, rom: int) -> int | None:
        i = rom // ROM_BLOCK
        return self.bytes[i] if rom < ROM_PROBE_LIMIT and self.seen[i] else None


@dataclass(frozen=True)
class SectionRow:
    idstr: str
    version_id: int | None
    minimum_version_id: int | None
    load: str  # "vmsd" (vmstate_load_state's bounds) or "equal" (a live load function takes version_id only)
    instances: tuple[int, ...] | None  # None: not known here (or counted)
    verified: bool
    src: str
    # the destination registers 0..n-1, n its own count (one per CPU, one per bus): a destination
    # configured as the source was has as many as the stream carries (judge_counted)
    counted: bool = False
    fields_v: Mapping[str, int] | None = None  # field -> the version it starts in (None: gates not known)


@dataclass(frozen=True)
class ValueRule:
    name: str
    kind: str  # "range", "equals-destination", "vapic-rom", "virtio-features", "enum", "ram-resize", "ahci-ports"
    section: str  # the VMSD name
    fields: tuple[str, ...]  # the field's names (first found is read)
    qemu: str  # the text the destination prints
    versions: tuple[str, ...]
    verified: bool
    src: str
    params: Mapping = field(default_factory=dict)


@dataclass(frozen=True)
class Finding:
    code: Code
    message: str


@functools.lru_cache(maxsize=1)
def _data() -> dict:
    from importlib import resources

    data = json.loads((resources.files("conformance.rules") / "data" / "value-rules.json").read_text())
    if data.get("format") != FORMAT:
        raise ValueError(f"value-rules format {data.get('format')!r}, expected {FORMAT}")
    return data


@functools.lru_cache(maxsize=8)
def sections(version: str) -> dict[str, SectionRow]:
    """The sections `version` registers outside device classes ({} for a version without data)."""
    rows = _data()["sections"].get(version, {})
    return {name: SectionRow(name, r["v"], r["m"], r["load"],
                             None if r["instances"] in (None, COUNTED) else tuple(r["instances"]), r["verified"], r["src"],
                             r["instances"] == COUNTED, r.get("fields_v")) for name, r in rows.items()}


COUNTED = "counted"


@functools.lru_cache(maxsize=1)
def field_tests() -> dict[tuple[str, str], dict]:
    """(VMSD name, field name) -> its field_exists test: {"versions": frozenset} (a test of
    the version being loaded: is_version_1 ...) or {"nonzero": field} (a test of a value
    read before it at the same level: is_identify_set ...; "wire": its wire type where the
    destination's own streams never carried it)."""
    out = {}
    for r in _data().get("field_tests", []):
        out[(r["vmsd"], r["field"])] = ({"versions": frozenset(r["versions"])} if "versions" in r else
                                        {"nonzero": r["nonzero"], "wire": r.get("wire")})
    return out


def instances() -> dict[str, tuple[int, ...]]:
    """Device idstr (or "/" for any idstr with a device path) -> the instance ids registered
    (rows "counted" are judge_counted's)."""
    return {k: tuple(v["ids"]) for k, v in _data()["instances"].items() if v["ids"] != COUNTED}


@functools.lru_cache(maxsize=8)
def rules(version: str) -> tuple[ValueRule, ...]:
    keys = {"name", "kind", "section", "fields", "qemu", "versions", "verified", "src"}
    return tuple(ValueRule(r["name"], r["kind"], r["section"], tuple(r["fields"]), r["qemu"], tuple(r["versions"]),
                           r["verified"], r["src"], {k: v for k, v in r.items() if k not in keys})
                 for r in _data()["rules"] if version in r["versions"])


def ram_blocks() -> dict[str, dict]:
    """RAMBlocks every destination of the modelled versions has: fixed ones with their
    length, resizeable ones with their max_length."""
    return dict(_data()["ram_blocks"])


def _page_align(n: int, page: int = 4096) -> int:
    return (n + page - 1) & -page


def judge_ram_block(name: str, length: int, local: int | None = None) -> Finding | None:
    """A MEM_SIZE entry as qemu_ram_resize judges it: lengths compare page-aligned; a fixed
    block must keep its length, a resizeable one may take any length up to its max_length.
    `local`: the destination's own used_length (from its reference stream), else the table's."""
    row = ram_blocks().get(name)
    want = _page_align(length)
    if row is not None and row["resizeable"]:
        if want > row["max"]:
            return Finding(Code.RAM_BLOCK_SIZE_MISMATCH,
                           f"Size too large: {name}: 0x{want:x} > 0x{row['max']:x}: Invalid argument")
        return None
    if local is None and row is not None:
        local = row["length"]
    if local is not None and want != _page_align(local):
        return Finding(Code.RAM_BLOCK_SIZE_MISMATCH, f"Size mismatch: {name}: 0x{want:x} != 0x{local:x}: Invalid argument")
    return None


@functools.lru_cache(maxsize=8)
def pci_config(version: str) -> dict[str, dict[int, int]]:
    """VMSD name -> {offset: the destination's byte under cmask} (scripts/gen_pci_config.py)."""
    rows = _data().get("pci_config", {}).get("versions", {}).get(version, {})
    return {vmsd: {int(o, 0): b for o, b in bytes_.items()} for vmsd, bytes_ in rows.items()}


def pci_cmask() -> dict[int, int]:
    return {int(o, 0): m for o, m in _data().get("pci_config", {}).get("cmask", {}).items()}


def _config_space(decoded) -> bytes | None:
    """A PCI device body's config space: its first field is the PCIDevice struct."""
    first = decoded.fields[0].value if decoded.fields else None
    for f in getattr(first, "fields", ()):
        if f.name.startswith("config[") and isinstance(f.value, (bytes, bytearray)):
            return bytes(f.value)
    return None


# read-only bits whose value comes from where the device sits, not from what it is: the
# multifunction bit of the header type is set when its slot holds several functions (the
# built-in ICH9 AHCI at 00:1f.2 has it, an ich9-ahci added at 00:01.0 has not); the
# destination, started with the same placement, has the source's value
PLACEMENT_BITS = {0x0E: 0x80}


def judge_pci_config(vmsd: str, config: bytes, own: Mapping[int, int]) -> Finding | None:
    """get_pci_config_device: the first byte whose read-only bits (cmask, not writable) differ."""
    cmask = pci_cmask()
    for off in sorted(own):
        if off < len(config) and (config[off] ^ own[off]) & cmask[off] & ~PLACEMENT_BITS.get(off, 0):
            return Finding(Code.PCI_CONFIG_READ_ONLY,
                           f"get_pci_config_device: Bad config data: i=0x{off:x} read: {config[off]:x} device: "
                           f"{own[off]:x} cmask: {cmask[off]:x} wmask: 0 w1cmask:0 ({vmsd}: the destination keeps "
                           "this byte read-only)")
    return None


def table() -> list[dict]:
    """Every row of every table, flat (for the catalogue's documentation and the report)."""
    out = []
    for version, rows in _data()["sections"].items():
        for name, r in rows.items():
            out.append({"table": "section", "version": version, "section": name, **r})
    for name, r in _data()["instances"].items():
        out.append({"table": "instances", "section": name, **r})
    for name, r in _data()["ram_blocks"].items():
        out.append({"table": "ram_blocks", "section": name, **r})
    for r in _data()["rules"]:
        out.append({"table": "value", **r})
    return out


# --------------------------------------------------------------------------- section headers

def _unknown(idstr: str, instance_id: int) -> Finding:
    return Finding(Code.UNKNOWN_SECTION,
                   f"Unknown savevm section or instance '{idstr}' {instance_id}. Make sure that your current VM setup "
                   "matches your saved VM setup, including any hotplugged devices")


# savevm.c's find_se matches an entry by its instance id OR its alias id, and an entry
# registered without an alias keeps alias -1: so the wire value 0xffffffff finds any such
# entry (checked: QEMU 10.0 loads 'timer' instance 0xffffffff), and a device with a legacy
# alias (its I/O base) is found by that too.
INSTANCE_ANY = 0xFFFFFFFF


def aliases(idstr: str) -> tuple[int, ...]:
    """The legacy instance-id aliases the destination registers for idstr (none: alias -1)."""
    row = _data()["instances"].get(idstr) or {}
    return tuple(row.get("aliases", ()))


def instance_matches(idstr: str, instance_id: int, ids) -> bool:
    """Whether find_se finds an entry of idstr registered with one of `ids` for instance_id."""
    alias = aliases(idstr)
    return instance_id in ids or instance_id in alias or (instance_id == INSTANCE_ANY and not alias)


def judge_instance(idstr: str, instance_id: int) -> Finding | None:
    """A device section's instance id against the ones the destination registers (None: not known)."""
    table = instances()
    ids = table.get(idstr)
    if ids is None and "/" in idstr:
        ids = table.get("/")
    if ids is not None and not instance_matches(idstr, instance_id, ids):
        return _unknown(idstr, instance_id)
    return None


def judge_other_section(row: SectionRow, idstr: str, instance_id: int, version_id: int) -> Finding | None:
    """A header of a section registered outside device classes, in the order savevm.c checks:
    the entry (idstr, instance), then its version, then the load function's own check."""
    if row.instances is not None and not instance_matches(idstr, instance_id, row.instances):
        return _unknown(idstr, instance_id)
    if row.instances is None and not row.counted and (f := judge_instance(idstr, instance_id)) is not None:
        return f
    if row.version_id is not None and version_id > row.version_id:
        return Finding(Code.SECTION_VERSION_TOO_NEW, f"savevm: unsupported version {version_id} for '{idstr}' v{row.version_id}")
    if row.minimum_version_id is not None and version_id < row.minimum_version_id:
        if row.load == "equal":
            return Finding(Code.SECTION_VERSION_TOO_OLD,
                           f"error while loading state for instance 0x{instance_id:x} of device '{idstr}' (its load "
                           f"function takes version {row.minimum_version_id} only: -EINVAL)")
        return Finding(Code.SECTION_VERSION_TOO_OLD,
                       f"{row.idstr}: incoming version_id {version_id} is too old for local minimum version_id  "
                       f"{row.minimum_version_id}")
    return None


def judge_counted(version: str, headers: Iterable[Mapping], device=None) -> list[tuple[Mapping, Finding]]:
    """Sections whose instances the destination numbers 0..n-1: rows marked "counted" (a
    CPU's index, its APIC id, a bus registered with VMSTATE_INSTANCE_ID_ANY), and every device
    section without a device path that no row fixes (`device(idstr)`: the destination has that
    device class; qdev registers it with VMSTATE_INSTANCE_ID_ANY). Against a destination
    configured as the source was (as many CPUs, buses and devices of a kind as the stream
    carries sections of that name), an instance id from n on, not an alias, is one find_se
    does not find. `headers`: the stream's START/FULL headers (dicts with idstr,
    instance_id); each offending one with its finding."""
    rows = {name for name, row in sections(version).items() if row.counted}
    fixed = _data()["instances"]
    rows |= {name for name, r in fixed.items() if r["ids"] == COUNTED}

    def counted(idstr) -> bool:
        if not isinstance(idstr, str):
            return False
        if idstr in rows:
            return True
        return device is not None and "/" not in idstr and idstr not in fixed and idstr not in sections(version) \
            and device(idstr)

    headers = [h for h in headers if counted(h.get("idstr"))]
    count: dict[str, int] = {}
    for h in headers:
        count[h["idstr"]] = count.get(h["idstr"], 0) + 1
    out = []
    for h in headers:
        iid = h.get("instance_id") or 0
        if not instance_matches(h["idstr"], iid, range(count[h["idstr"]])):
            out.append((h, _unknown(h["idstr"], iid)))
    return out


# --------------------------------------------------------------------------- device bodies

@dataclass
class BodyJudgement:
    findings: list[tuple[int, str, Finding]] = field(default_factory=list)  # (stream offset, section, finding)
    checked: int = 0
    not_judged: dict[str, int] = field(default_factory=dict)  # rule -> bodies it could not judge

    def stats(self) -> dict:
        return {"checked": self.checked, "not_judged": dict(sorted(self.not_judged.items()))}


def _field_value(fields, names: tuple[str, ...]) -> int | None:
    for name in names:
        for f in fields:
            if f.name == name and isinstance(f.value, int):
                return f.value
    return None


def judge_bodies(version: str, bodies: Iterable[tuple[str, int, bytes, int]], vmdescription: bytes | None,
                 globals_: Mapping[str, str], ram_blocks: Mapping[str, int], probe: RomProbe | None = None) -> BodyJudgement:
    """Each FULL body (idstr, instance, data, offset) a rule of `version` covers, decoded by
    the stream's own VMDESCRIPTION (no description: not judged)."""
    from wireformat import vmstate

    out = BodyJudgement()
    active = rules(version)
    pci_state = next((r for r in active if r.kind == "pci-device-state"), None)
    active = tuple(r for r in active if r.kind != "pci-device-state")
    pci = pci_config(version)
    if not active and not pci:
        return out
    descs: dict = {}
    if vmdescription is not None:
        from wireformat.budgets import JsonInputError, load_json

        try:  # within the input budgets: the loader reported a malformed description already
            for d in load_json(vmdescription, "VMDESCRIPTION").get("devices", []):
                # an entry of the wrong JSON types describes nothing a rule can use (the
                # loader reported the malformed description already)
                if isinstance(d, dict) and isinstance(d.get("name"), str) \
                        and isinstance(d.get("instance_id", 0), int) and isinstance(d.get("vmsd_name", ""), str):
                    descs.setdefault((d["name"], d.get("instance_id", 0)), d)
        except (JsonInputError, ValueError, AttributeError, TypeError):
            descs = {}
    for idstr, inst, data, off in bodies:
        desc = descs.get((idstr, inst))
        name = desc.get("vmsd_name", idstr) if desc else idstr
        mine = [r for r in active if r.section == name]
        own = pci.get(name) if "/" in idstr else None
        state = pci_state if "/" in idstr else None
        if not mine and own is None and state is None:
            continue
        try:
            decoded = vmstate.decode_body(desc, bytes(data)) if desc is not None else None
        except (ValueError, KeyError, TypeError, IndexError):
            decoded = None
        if state is not None:
            f = _pci_device_state(state, desc, decoded, bytes(data))
            if f == "not judged":
                out.not_judged[state.name] = out.not_judged.get(state.name, 0) + 1
            elif f != "not pci":
                out.checked += 1
                if f is not None:
                    out.findings.append((off, f"{idstr} instance {inst}", f))
                    continue  # the load stops there
        if not mine and own is None:
            continue
        if own is not None:
            config = _config_space(decoded) if decoded is not None else None
            if config is None:
                out.not_judged["pci-config"] = out.not_judged.get("pci-config", 0) + 1
            else:
                out.checked += 1
                if (f := judge_pci_config(name, config, own)) is not None:
                    out.findings.append((off, f"{idstr} instance {inst}", f))
        for rule in [r for r in mine if r.kind == "virtio-features"]:
            f = _virtio_features(rule, bytes(data))
            if f == "not judged":
                out.not_judged[rule.name] = out.not_judged.get(rule.name, 0) + 1
                continue
            out.checked += 1
            if f is not None:
                out.findings.append((off, f"{idstr} instance {inst}", f))
        mine = [r for r in mine if r.kind != "virtio-features"]
        for rule in mine:
            if decoded is None:
                out.not_judged[rule.name] = out.not_judged.get(rule.name, 0) + 1
                continue
            f = _judge(rule, decoded, globals_, ram_blocks, probe)
            if f == "not judged":
                out.not_judged[rule.name] = out.not_judged.get(rule.name, 0) + 1
                continue
            out.checked += 1
            if f is not None:
                out.findings.append((off, f"{idstr} instance {inst}", f))
    return out


PCI_DEVICE_SAVE = 4 + 256 + 16  # vmstate_pci_device: version_id, config space, irq_state


def _pci_device_state(rule: ValueRule, desc, decoded, body: bytes):
    """vmstate_pci_device as the destination loads it, in a PCI device's body: its version_id
    (VMSTATE_INT32_POSITIVE_LE: 0..the destination's own) and its four irq states
    (get_pci_irq_state: each 0 or 1). Decoded by the description where the body is a VMSD;
    read raw at offset 0 where a virtio device's custom save starts with it."""
    p = rule.params
    first = decoded.fields[0].value if decoded is not None and decoded.fields else None
    inner = getattr(first, "fields", None)
    if inner is not None and any(f.name.startswith("config[") for f in inner):
        ver = _field_value(inner, ("version_id",))
        irq = next((f.value for f in inner if f.name == "irq_state" and isinstance(f.value, (bytes, bytearray))), None)
    elif desc is not None and [f.get("name") for f in desc.get("fields", [])[:1] if isinstance(f, dict)] == ["virtio"]:
        if len(body) < PCI_DEVICE_SAVE:
            return "not judged"
        ver, irq = int.from_bytes(body[:4], "big", signed=True), body[260:276]
    else:
        return "not pci"
    if ver is not None and not 0 <= ver <= p["version_id"]:
        return Finding(Code.DEVICE_VALUE_CHECK, f"Invalid value {ver} expecting positive value <= {p['version_id']} "
                       f"(vmstate_pci_device version_id)")
    if irq is None or len(irq) != 16:
        return "not judged"
    for k in range(4):
        v = int.from_bytes(irq[4 * k:4 * k + 4], "big", signed=True)
        if v not in (0, 1):
            return Finding(Code.DEVICE_VALUE_CHECK, f"irq state {v}: must be 0 or 1. (pci irq_state[{k}]; get_pci_irq_state: "
                           "-EINVAL)")
    return None
MSIX_CAP_ID, MSIX_ENTRY = 0x11, 16


def _virtio_features(rule: ValueRule, body: bytes):
    """The guest features virtio_load checks against the device's host features, read from a
    virtio-pci device body: PCI state, MSI-X table and PBA (their size from the MSI-X capability
    in the config space) and the config vector, then status, isr, queue_sel, features."""
    if len(body) < PCI_DEVICE_SAVE:
        return "not judged"
    cfg = body[4:4 + 256]
    cap, n, hops = cfg[0x34], 0, 0
    while cap and cap + 4 <= len(cfg) and hops < 48:
        if cfg[cap] == MSIX_CAP_ID:
            n = (int.from_bytes(cfg[cap + 2:cap + 4], "little") & 0x7FF) + 1
            break
        cap, hops = cfg[cap + 1], hops + 1
    at = PCI_DEVICE_SAVE + (n * MSIX_ENTRY + (n + 7) // 8 + 2 if n else 0) + 4
    if at + 4 > len(body):
        return "not judged"
    features = int.from_bytes(body[at:at + 4], "big")
    allowed = rule.params["allowed"]
    if features & ~allowed:
        return Finding(Code.DEVICE_VALUE_CHECK, f"Features 0x{features:x} unsupported. Allowed features: 0x{allowed:x}")
    return None


def _struct(fields, name: str):
    """The nested fields of the (first) struct field `name`."""
    return next((f.value.fields for f in fields if f.name == name and hasattr(f.value, "fields")), None)


def _elements(fields, name: str) -> list:
    """The nested fields of each element of the struct field (or struct array) `name`,
    whether the decoder gives one field per element or one field holding them all."""
    out = []
    for f in fields:
        if f.name != name:
            continue
        for v in (f.value if isinstance(f.value, (list, tuple)) else (f.value,)):
            if hasattr(v, "fields"):
                out.append(v.fields)
    return out


def _ram_resize(rule: ValueRule, decoded):
    """A subsection of sizes post_load gives to memory_region_ram_resize with &error_abort:
    qemu_ram_resize refuses (and the destination aborts) a page-aligned size beyond the
    block's max_length."""
    sub = next((s for s in decoded.subsections if s.name == rule.params["subsection"]), None)
    if sub is None:
        return None  # not sent: post_load resizes nothing
    for name, block in rule.params["blocks"].items():
        size = _field_value(sub.fields, (name,))
        if size is None:
            return "not judged"
        if (f := judge_ram_block(block, size)) is not None:
            return Finding(Code.DEVICE_VALUE_CHECK, f"{rule.qemu}: {f.message} ({rule.params['subsection']} {name} "
                           f"{size:#x}; post_load resizes {block} with error_abort: the destination aborts)")
    return None


def _ahci_ports(rule: ValueRule, decoded):
    """ahci_state_post_load, port by port: the checks whose outcome the stream alone decides
    (a port whose engines it restarts also maps guest memory; when a check here fails, the
    load fails whatever that mapping does)."""
    p = rule.params
    ahci = _struct(decoded.fields, p["struct"])
    if ahci is None:
        return "not judged"
    for port, dev in enumerate(_elements(ahci, "dev")):
        cmd = _field_value(dev, ("port_regs.cmd",))
        busy = _field_value(dev, ("busy_slot",))
        if cmd is None or busy is None:
            return "not judged"
        if cmd & p["list_on"] and not cmd & p["start"]:
            return Finding(Code.DEVICE_VALUE_CHECK, f"AHCI: DMA engine should be off, but status bit indicates it is "
                           f"still running. (port {port}: cmd {cmd:#x})")
        if cmd & p["fis_on"] and not cmd & p["fis_rx"]:
            return Finding(Code.DEVICE_VALUE_CHECK, f"AHCI: FIS RX engine should be off, but status bit indicates it "
                           f"is still running. (port {port}: cmd {cmd:#x})")
        tfss = _elements(dev, "ncq_tfs")
        if len(tfss) != p["max_cmds"]:
            return "not judged"
        for slot, tfs in enumerate(tfss):
            used, halt = _field_value(tfs, ("used",)), _field_value(tfs, ("halt",))
            if used is None or halt is None:
                return "not judged"
            if bool(used) != bool(halt):
                return Finding(Code.DEVICE_VALUE_CHECK, f"{rule.qemu} (port {port} NCQ slot {slot}: used {used} and "
                               f"halt {halt} differ; post_load: -1)")
        if busy != -1 and not 0 <= busy < p["max_cmds"]:
            return Finding(Code.DEVICE_VALUE_CHECK, f"{rule.qemu} (port {port}: busy_slot {busy} outside "
                           f"-1..{p['max_cmds'] - 1}; post_load: -1)")
    return None


def _judge(rule: ValueRule, decoded, globals_: Mapping[str, str], ram_blocks: Mapping[str, int],
           probe: RomProbe | None):
    p = rule.params
    if rule.kind == "ram-resize":
        return _ram_resize(rule, decoded)
    if rule.kind == "ahci-ports":
        return _ahci_ports(rule, decoded)
    fields = decoded.fields
    value = _field_value(fields, rule.fields)
    if rule.kind == "range":
        if value is None:
            return "not judged"
        if not p["lo"] <= value <= p["hi"]:
            return Finding(Code.DEVICE_VALUE_CHECK, f"{rule.qemu} ({rule.fields[0]} {value}, allowed {p['lo']}..{p['hi']})")
        return None
    if rule.kind == "equals-destination":
        if value is None:
            return "not judged"
        try:
            local = int(str(globals_.get(p["global"], p["default"])), 0)
        except (TypeError, ValueError):
            return "not judged"
        if value != local:
            return Finding(Code.DEVICE_VALUE_CHECK, f"{rule.qemu} ({rule.fields[0]} {value}, the destination's "
                           f"{p['global']} is {local})")
        return None
    if rule.kind == "virtio-features":
        return "not judged"  # read from the raw body (judge_bodies)
    if rule.kind == "enum":
        raw = next((f.value for f in fields if f.name in rule.fields and isinstance(f.value, (bytes, bytearray))), None)
        if raw is None:
            return "not judged"
        text = bytes(raw[:len(raw) - 1] if len(raw) and 0 not in raw else raw).split(b"\0", 1)[0]
        name = text.decode("utf-8", "replace")
        if name not in p["members"]:
            return Finding(Code.DEVICE_VALUE_CHECK, f"invalid parameter value: {name} ({rule.section}/{rule.fields[0]} "
                           f"must name one of {len(p['members'])} members; post_load: -EINVAL)")
        return None
    if rule.kind == "vapic-rom":
        state = _field_value(fields, ("state",))
        paddr = _field_value(fields, ("rom_state_paddr",))
        if state is None or paddr is None:
            return "not judged"
        if state == 0 and paddr == 0:
            return None  # VAPIC_INACTIVE without a ROM: post_load maps nothing
        rom = paddr & ~(ROM_BLOCK - 1)
        size = ram_blocks.get(p["ram_block"])
        if size is not None and rom + 2 >= size:
            return Finding(Code.DEVICE_VALUE_CHECK, f"{rule.qemu} (state {state}, rom_state_paddr {paddr:#x}: the ROM "
                           f"size byte at {rom + 2:#x} lies beyond {p['ram_block']}, {size:#x} bytes)")
        # within RAM, the outcome depends on the ROM size byte the stream left there
        got = probe.size_byte(rom) if probe is not None and probe.block == p["ram_block"] else None
        if got is None:
            return "not judged"
        if got == 0:
            return Finding(Code.DEVICE_VALUE_CHECK, f"{rule.qemu} (state {state}, rom_state_paddr {paddr:#x}: guest RAM "
                           f"holds no option ROM at {rom:#x}, its size byte is 0)")
        return None
    return "not judged"
