"""Device state loaded as the DESTINATION loads it: by its own VMSD layout, not the source's.

A destination reads each FULL device body with the VMSD it has registered for that section,
in the order migration/vmstate.c vmstate_load_state does (the same in QEMU 7.2 and 10.0):

* version checks: a subsection's version above the VMSD's version_id or below its
  minimum_version_id fails ("%s: incoming version_id %d is too new/old ...");
* fields in declaration order; a field is read when its field_exists test says so, or else
  when its version_id <= the version being loaded; element count: fixed (VMS_ARRAY), or
  from an earlier field / device property (VMS_VARRAY_*), element size fixed or from a field
  (VMS_VBUFFER); structs recurse with the nested VMSD's own version;
* `... equal` fields fail unless the value equals the destination's own ("%x != %x");
  `int32 le` fails unless 0 <= value <= the destination's ("Invalid value ...");
* then subsections: while the next byte is QEMU_VM_SUBSECTION and the counted name starts
  with the VMSD's name, a name the destination's VMSD lacks fails the load (-ENOENT,
  "error while loading state for instance 0x%x of device '%s'"); a known one is loaded with
  the be32 version it carries (kept in a uint8_t: QEMU truncates it);
* then savevm.c check_section_footer: the next byte must be the footer of this section,
  else "Missing section footer for %s".

The layouts are data (conformance/rules/data/dest-vmsd-<version>.json.gz, written by
scripts/gen_dest_vmsd.py from the binaries' -dump-vmstate and their own streams). Where the
data cannot say what the destination does -- a field_exists test the stream and the
destination's own saves disagree about, an element count taken from a field the layout does
not name, a custom-coded field (virtio, msix state, ...) -- the section is "not judged" from
that field on: counted, never guessed.
"""

from __future__ import annotations

import functools
import gzip
import json
import re
from dataclasses import dataclass, field
from typing import Iterable

from wireformat.budgets import BUDGETS, load_json

from conformance.rules.catalogue import Code

FORMAT = 1
SUBSECTION = 0x05  # QEMU_VM_SUBSECTION
FOOTER = 0x7E  # QEMU_VM_SECTION_FOOTER
NULLPTR = 0x30  # VMS_NULLPTR_MARKER

# Info types whose wire size is not fixed by the declaration (custom get/put code).
CUSTOM_TYPES = frozenset({"virtio", "msix state", "bitmap", "qtailq", "gtree", "qlist", "unknown", "vstruct",
                          "nullptr", "fd", "usb device", "pci config space", "vga"})
# The one VMS_VSTRUCT user in 7.2 and 10.0 (hw/ipmi/isa_ipmi_kcs.c): its nested version is
# struct_version_id, which the dump does not give.
VSTRUCT_FIELDS = frozenset({("ISAIPMIKCSDevice", "kcs")})
_SIGNED = re.compile(r"^int(8|16|32|64)\b")


def family_of(machine: str | None) -> str | None:
    """The machine-type family whose device instances a layout's observations come from."""
    if not machine:
        return None
    if machine == "pc" or machine.startswith("pc-i440fx-") or machine.startswith("pc-") and "q35" not in machine:
        return "i440fx"
    if machine == "q35" or machine.startswith("pc-q35-"):
        return "q35"
    return None


# --------------------------------------------------------------------------- layouts

@dataclass
class Layouts:
    """One QEMU version's device layouts (see scripts/gen_dest_vmsd.py for the keys)."""

    version: str
    tops: dict  # vmsd name -> [{"ref", "types"}]
    shapes: dict  # "name#k" -> declaration
    presence: dict  # family -> top vmsd -> path -> bool | None
    values: dict  # family -> top vmsd -> path -> int | None
    outside: dict  # vmsd name -> observed layout (VMSDs registered outside device classes)

    @classmethod
    def from_json(cls, data: dict) -> "Layouts":
        if data.get("format") != FORMAT:
            raise ValueError(f"destination layout format {data.get('format')!r}, expected {FORMAT}")
        return cls(data["version"], data["tops"], data["shapes"], data["presence"], data["values"], data["outside"])


@functools.lru_cache(maxsize=4)
def builtin_layouts(version: str) -> Layouts | None:
    from importlib import resources

    res = resources.files("conformance.rules") / "data" / f"dest-vmsd-{version}.json.gz"
    if not res.is_file():
        return None
    return Layouts.from_json(json.loads(gzip.decompress(res.read_bytes())))


# --------------------------------------------------------------------------- outcomes

@dataclass(frozen=True)
class Finding:
    code: Code  # DEVICE_LOAD_FAILED, DEVICE_SUBSECTION_UNKNOWN, DEVICE_FIELD_EQUAL_MISMATCH or DEVICE_STATE_NOT_JUDGED
    message: str
    field: str | None = None  # "vmsd:field" where the destination stopped
    at: int = 0  # offset in the body


@dataclass
class Judgement:
    """What the destination's layout made of the device bodies of one stream."""

    findings: list[tuple[int, str, Finding]] = field(default_factory=list)  # (stream offset, section, finding)
    loaded: int = 0  # sections read to their end by the destination's layout
    rejected: int = 0
    not_judged: dict[str, int] = field(default_factory=dict)  # reason -> sections
    no_layout: int = 0  # sections the layouts do not describe at all (old-style, unknown vmsd)

    def stats(self) -> dict:
        return {"loaded": self.loaded, "rejected": self.rejected, "not_judged": sum(self.not_judged.values()),
                "not_judged_reasons": dict(sorted(self.not_judged.items())), "no_layout": self.no_layout}


class _Stop(Exception):
    def __init__(self, finding: Finding):
        self.finding = finding


class _NotJudged(Exception):
    def __init__(self, reason: str, where: str):
        super().__init__(reason)
        self.reason, self.where = reason, where


class _Short(Exception):
    pass


# --------------------------------------------------------------------------- the loader

def _desc_groups(desc: dict | None) -> list[tuple[str, list[dict]]] | None:
    """A VMDESCRIPTION object's fields grouped by declared field (a struct array is one
    entry per element, index 0.. ; 10.0 leaves the index off the last element)."""
    if desc is None:
        return None
    groups: list[tuple[str, list[dict]]] = []
    for e in desc.get("fields", []):
        if not isinstance(e, dict):
            return None
        if groups and groups[-1][0] == e.get("name") and groups[-1][1][0].get("index") == 0 and "array_len" not in e \
                and e.get("index") in (None, len(groups[-1][1])):
            groups[-1][1].append(e)
            continue
        groups.append((e.get("name"), [e]))
    return groups


def _desc_name(fields: list[dict], i: int) -> str:
    """The name QEMU writes in VMDESCRIPTION for declared field i ("<name>[k]" when several
    declared fields share the name)."""
    name = fields[i]["n"]
    same = [j for j, f in enumerate(fields) if f["n"] == name]
    return name if len(same) == 1 else f"{name}[{same.index(i)}]"


class _Load:
    """One section body read by one destination VMSD."""

    def __init__(self, layouts: Layouts, body: bytes, family: str | None, top: str):
        self.l = layouts
        self.body = body
        self.pos = 0
        self.elements = 0  # counts and nested structs read so far, against the budget
        self.top = top
        self.idstr = top  # the section's idstr, as QEMU names it in its messages
        self.presence = (layouts.presence.get(family or "", {}) or {}).get(top, {})
        self.values = (layouts.values.get(family or "", {}) or {}).get(top, {})

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.body):
            raise _Short()
        b = self.body[self.pos:self.pos + n]
        self.pos += n
        return b

    # -- declared VMSDs (from -dump-vmstate) ----------------------------------------------
    def vmsd(self, ref: str, version: int, desc: dict | None, path: str) -> None:
        shape = self.l.shapes[ref]
        name = shape["n"]
        if version > shape["v"]:
            raise _Stop(Finding(Code.DEVICE_LOAD_FAILED,
                                f"{name}: incoming version_id {version} is too new for local version_id {shape['v']}", name,
                                self.pos))
        if version < shape["m"]:
            raise _Stop(Finding(Code.DEVICE_LOAD_FAILED,
                                f"{name}: incoming version_id {version} is too old for local minimum version_id "
                                f"{shape['m']}", name, self.pos))
        fields = shape["f"]
        groups = _desc_groups(desc)
        tests = _version_tests()
        if groups is not None and version != shape["v"]:
            self.versions_against_source(name, fields, version, shape["v"], {g[0] for g in groups}, tests)
        gi = 0
        ints: dict[str, int] = {}  # integers read at this level: a VARRAY's count is one of them
        for i, f in enumerate(fields):
            where = f"{name}:{f['n']}"
            key = f"{path}{i}"
            in_stream = None
            if groups is not None:
                in_stream = gi < len(groups) and groups[gi][0] == _desc_name(fields, i)
            test = tests.get((name, f["n"])) if f.get("x") else None
            if test is not None and "versions" in test:
                exists = version in test["versions"]  # a test of the version being loaded
            elif test is not None:
                if test["nonzero"] not in ints:
                    raise _NotJudged("field_exists test not resolved", where)
                exists = ints[test["nonzero"]] != 0  # a test of a value read before it
                if exists and "w" not in f and test.get("wire"):
                    f = {**f, "w": test["wire"]}
            elif f.get("x"):
                own = self.presence.get(key)
                if own is None or in_stream is None or own != in_stream:
                    raise _NotJudged("field_exists test not resolved", where)
                exists = own
            else:
                exists = f["v"] <= version
            if not exists:
                continue
            entries = None
            if in_stream:
                entries = groups[gi][1]
                gi += 1
            elif groups is not None:
                groups = None  # the source wrote something else here: its description no longer aligns
            got = self.field(f, where, key, entries, name, ints)
            if got is not None:
                ints[f["n"]] = got
        self.subsections(shape["n"], {self.l.shapes[r]["n"]: r for r in shape["s"]}, desc, path, complete=True)

    def versions_against_source(self, name: str, fields: list[dict], version: int, own: int, written: set,
                                tests: dict) -> None:
        """Before reading a version other than the destination's own: a field that version
        leaves out (and its own includes) that the source wrote (its VMDESCRIPTION names it),
        or one that version reads (and its own does not) that the source did not write, makes
        the destination read a different number of bytes than the body holds, whatever the
        fields before it are (a custom one included): the load fails at the footer. (Only
        such fields: other names may differ between the two versions' descriptions.)"""
        for i, f in enumerate(fields):
            dname = _desc_name(fields, i)
            test = tests.get((name, f["n"])) if f.get("x") else None
            if test is not None and "versions" in test:
                exists, at_own = version in test["versions"], own in test["versions"]
            elif f.get("x"):
                continue  # its test is resolved while reading
            else:
                exists, at_own = f["v"] <= version, f["v"] <= own
            if exists != at_own and exists != (dname in written) and _fixed_size(f):
                what = (f"leaves out {dname} (from version {f['v']}), which the source wrote" if not exists else
                        f"reads {dname}, which the source did not write")
                raise _Stop(Finding(Code.DEVICE_LOAD_FAILED,
                                    f"Missing section footer for {self.idstr}: loading {name} at version {version} the "
                                    f"destination {what}", f"{name}:{f['n']}", self.pos))

    def field(self, f: dict, where: str, key: str, entries: list[dict] | None, vmsd: str,
              ints: dict[str, int]) -> int | None:
        """Read one declared field; its value when it is a single integer (a later count)."""
        w = f.get("w") or {}
        count = w.get("c", f.get("num"))
        if count == "var" and w.get("cf") in ints:
            count = ints[w["cf"]]  # VMS_VARRAY_*: the count is an earlier field of the same struct
            if count < 0:
                raise _NotJudged("negative element count", where)
        elif count == "var" and w.get("cf") and self.values.get(f"{key}#n") is not None:
            # counted by a field the stream does not carry (a device property): the
            # destination's own count for this device, as its own saves show it
            count = self.values[f"{key}#n"]
        if count is None or count == "var":
            raise _NotJudged("element count not known" if count is None else "element count from another field",
                             where)
        if not isinstance(count, int):
            raise _NotJudged("element count not an integer", where)
        self.elements += count
        if self.elements > BUDGETS.vmstate_elements:  # counts come from the stream (VARRAY fields)
            raise _NotJudged(f"more than {BUDGETS.vmstate_elements} elements", where)
        if "d" in f:
            if (vmsd, f["n"]) in VSTRUCT_FIELDS or w.get("t") not in (None, "struct", "tmp"):
                raise _NotJudged(f"{w.get('t')} field", where)
            nested = self.l.shapes[f["d"]]
            for k in range(count):
                d = None
                if entries is not None:  # a compressed struct array is one entry for all elements
                    d = entries[0] if "array_len" in entries[0] else entries[k] if k < len(entries) else None
                d = d.get("struct", d) if d is not None else None
                self.vmsd(f["d"], nested["v"], d, f"{key}.{k}/")
            return None
        t, e = w.get("t"), w.get("e")
        if t is None or e is None:
            raise _NotJudged("wire type not known", where)
        if t in CUSTOM_TYPES or (t in ("buffer", "unused_buffer") and e != f["s"]):
            raise _NotJudged(f"'{t}' field", where)
        if t.endswith(" equal") or t == "int32 le":
            for _ in range(count):
                got = self.checked(t, e, where, self.values.get(key))
            return got if count == 1 else None
        raw = self.take(e * count)
        if count == 1 and e in (1, 2, 4, 8) and (t == "bool" or t.startswith(("int", "uint"))):
            return int.from_bytes(raw, "big", signed=bool(_SIGNED.match(t)))
        return None

    def checked(self, t: str, size: int, where: str, local: int | None) -> int:
        at = self.pos
        raw = self.take(size)
        signed = bool(_SIGNED.match(t)) or t == "int32 le"
        got = int.from_bytes(raw, "big", signed=signed)
        if local is None:
            return got  # the destination's own value is not known: the bytes are read, the check not judged
        if t == "int32 le":
            if not 0 <= got <= local:
                raise _Stop(Finding(Code.DEVICE_FIELD_EQUAL_MISMATCH,
                                    f"Invalid value {got} expecting positive value <= {local}; Failed to load {where}",
                                    where, at))
        elif got != local:
            mask = (1 << (8 * size)) - 1
            raise _Stop(Finding(Code.DEVICE_FIELD_EQUAL_MISMATCH,
                                f"{local & mask:x} != {got & mask:x}; Failed to load {where}", where, at))
        return got

    def subsections(self, name: str, known: dict, desc: dict | None, path: str, complete: bool,
                    outside: dict | None = None) -> None:
        prefix = name.encode()
        descs = {s.get("vmsd_name"): s for s in (desc or {}).get("subsections", []) if isinstance(s, dict)}
        body = self.body
        while self.pos < len(body) and body[self.pos] == SUBSECTION:
            if self.pos + 2 > len(body):
                return
            n = body[self.pos + 1]
            if n < len(prefix) + 1 or self.pos + 2 + n > len(body):
                return
            raw = body[self.pos + 2:self.pos + 2 + n]
            if not raw.startswith(prefix):
                return
            sub = raw.decode("utf-8", "replace")
            if sub not in known:
                if not complete:
                    raise _NotJudged("subsection layout not known", sub)
                raise _Stop(Finding(Code.DEVICE_SUBSECTION_UNKNOWN,
                                    f"subsection '{sub}' is not one of {name}'s in this destination: the load fails "
                                    "(vmstate_subsection_load: -ENOENT)", sub, self.pos))
            at = self.pos
            self.pos += 2 + n
            version = int.from_bytes(self.take(4), "big") & 0xFF  # QEMU keeps it in a uint8_t
            ref = known[sub]
            if ref is None:
                self.pos = at
                raise _NotJudged("subsection layout not known", sub)
            if outside is not None:
                self.observed(ref, version, f"{path}s:{sub}/", sub)
            else:
                self.vmsd(ref, version, descs.get(sub), f"{path}s:{sub}/")

    # -- VMSDs registered outside device classes (layout from the destination's streams) ---
    def observed(self, shape: dict, version: int, path: str, name: str, gates: dict | None = None) -> None:
        """`gates`: the fields a version gate leaves out of older versions (rules.value_rules'
        fields_v): with them, a top-level version below the destination's own is read as
        vmstate_load_state reads it (a gated field is skipped); without, not judged."""
        if shape.get("f") is None:
            raise _NotJudged("fields differ between the destination's own streams", name)
        older = shape.get("v") is not None and version < shape["v"] and gates is not None
        if shape.get("v") is not None and version != shape["v"] and not older:
            raise _NotJudged("version other than the destination's own streams", name)
        for f in shape["f"]:
            where = f"{name}:{f['n']}"
            if older and gates.get(f["n"], 0) > version:
                continue
            if "d" in f:
                for _ in range(f["c"]):
                    self.observed(f["d"], f["d"].get("v"), path, f["d"].get("n") or name)
                continue
            if f["t"] in CUSTOM_TYPES:
                raise _NotJudged(f"'{f['t']}' field", where)
            if f["t"].endswith(" equal") or f["t"] == "int32 le":
                for _ in range(f["c"]):
                    self.checked(f["t"], f["e"], where, f.get("val"))
                continue
            self.take(f["e"] * f["c"])
        subs = shape.get("s") or {}
        names = shape.get("names")
        if names is not None:  # the top level: every name the binary can know
            known = {n: subs.get(n) for n in names}
            self.subsections(name, known, None, path, complete=True, outside=subs)
        else:
            self.subsections(name, dict(subs), None, path, complete=False, outside=subs)


def _desc_size(fields: list) -> int | None:
    """The bytes a VMDESCRIPTION field list says the source wrote (None: not said)."""
    total = 0
    for f in fields:
        if not isinstance(f, dict) or not isinstance(f.get("size"), int):
            return None
        total += f["size"] * (f["array_len"] if isinstance(f.get("array_len"), int) else 1)
    return total


def _observed_size(fields: list) -> int:
    return sum(f["c"] * (_observed_size(f["d"].get("f") or []) if "d" in f else f["e"]) for f in fields)


def _version_tests() -> dict:
    from conformance.rules import value_rules

    return value_rules.field_tests()


def _fixed_size(f: dict) -> bool:
    """A declared field that takes bytes on the wire (not a zero-length one)."""
    w = f.get("w") or {}
    if "d" in f:
        return True
    e, c = w.get("e"), w.get("c", f.get("num"))
    return not (isinstance(e, int) and e == 0) and not (isinstance(c, int) and c == 0)


def _outside_gates(version: str, name: str) -> dict | None:
    """The version gates of a VMSD registered outside device classes (read from the
    version's sources: rules.value_rules), None when not known."""
    from conformance.rules import value_rules

    row = value_rules.sections(version).get(name)
    return dict(row.fields_v) if row is not None and row.fields_v is not None else None


def _vmsd_candidates(idstr: str) -> list[str]:
    parts = idstr.split("/")
    return ["/".join(parts[i:]) for i in range(len(parts))]


def judge_section(layouts: Layouts, *, idstr: str, instance_id: int, version_id: int, body: bytes,
                  section_id: int | None = None, family: str | None = None,
                  desc: dict | None = None, gates: dict | None = None) -> Finding | None:
    """The destination's verdict on one FULL body: None (it loads, up to its footer), a
    rejecting Finding, or a device-state-not-judged Finding (with the reason)."""
    name = next((c for c in _vmsd_candidates(idstr) if c in layouts.tops or c in layouts.outside), None)
    if name is None:
        return Finding(Code.DEVICE_STATE_NOT_JUDGED, "no destination layout for this section", None)
    load = _Load(layouts, body, family, name)
    load.idstr = idstr
    try:
        if name in layouts.tops:
            refs = [v["ref"] for v in layouts.tops[name]
                    if layouts.shapes[v["ref"]]["m"] <= version_id <= layouts.shapes[v["ref"]]["v"]]
            if len(refs) != 1:
                # out of bounds is the section header's business (tables); several variants: which type?
                return Finding(Code.DEVICE_STATE_NOT_JUDGED,
                               "version outside the destination's VMSD" if not refs else
                               f"{len(refs)} destination VMSDs named {name}", name)
            load.vmsd(refs[0], version_id, desc, "")
        else:
            out = layouts.outside[name]
            fams = out["families"]
            shape = fams.get(family or "")
            if shape is None:
                shapes = list(fams.values())
                if not shapes or any(s != shapes[0] for s in shapes):
                    return Finding(Code.DEVICE_STATE_NOT_JUDGED, "layout differs by machine family, machine not known", name)
                shape = shapes[0]
            said = _desc_size(desc.get("fields", [])) if desc is not None and shape.get("f") is not None else None
            if gates is None:
                gates = _outside_gates(layouts.version, name)
            if said is not None and said != _observed_size(shape["f"]):
                # an observed layout has only the fields the destination's own (paused) streams
                # carried: a field they lacked (a VMSTATE_*_TEST one the guest has set, e.g. ide's
                # identify_data) is one the layout cannot place
                return Finding(Code.DEVICE_STATE_NOT_JUDGED, f"fields other than the destination's own streams ({name})",
                               name)
            load.observed({**shape, "names": out["names"], "n": name}, version_id, "", name, gates)
    except _Stop as e:
        return e.finding
    except _NotJudged as e:
        return Finding(Code.DEVICE_STATE_NOT_JUDGED, f"{e.reason} ({e.where})", e.where, load.pos)
    except _Short:
        return Finding(Code.DEVICE_LOAD_FAILED,
                       f"the destination reads more of {idstr} than the {len(body)} bytes the source wrote: it reads "
                       "into the section footer and what follows (the load fails)", None, len(body))
    if load.pos < len(body):
        nxt = body[load.pos]
        if nxt == FOOTER and load.pos + 5 <= len(body) and section_id is not None:
            got = int.from_bytes(body[load.pos + 1:load.pos + 5], "big")
            if got == section_id:
                return Finding(Code.DEVICE_LOAD_FAILED,
                               f"the destination reads {load.pos} of the {len(body)} bytes of {idstr}; what follows "
                               "looks like its footer, then the rest is read as records (the load fails)", None, load.pos)
        text = (f"Mismatched section id in footer for {idstr} - read 0x{int.from_bytes(body[load.pos + 1:load.pos + 5], 'big'):x} "
                f"expected 0x{section_id:x}") if nxt == FOOTER and section_id is not None and load.pos + 5 <= len(body) \
            else f"Missing section footer for {idstr}"
        return Finding(Code.DEVICE_LOAD_FAILED,
                       f"{text} (the destination's layout reads {load.pos} of the {len(body)} bytes the source wrote)",
                       None, load.pos)
    return None


def judge_bodies(layouts: Layouts, bodies: Iterable[tuple[str, int, bytes, int]], sections: list[dict],
                 machine: str | None, vmdescription: bytes | None) -> Judgement:
    """Every kept FULL body (idstr, instance, data, stream offset) of a stream."""
    heads = {}
    for s in sections:
        if s.get("idstr") is not None:
            heads.setdefault((s["idstr"], s.get("instance_id") or 0), s)
    descs = {}
    if vmdescription is not None:
        try:
            for d in load_json(vmdescription, "VMDESCRIPTION").get("devices", []):
                if isinstance(d, dict):
                    descs.setdefault((d.get("name"), d.get("instance_id", 0)), d)
        except (ValueError, AttributeError, TypeError):
            descs = {}
    fam = family_of(machine)
    out = Judgement()
    for idstr, inst, data, off in bodies:
        head = heads.get((idstr, inst))
        if head is None or head.get("version_id") is None:
            continue
        desc = descs.get((idstr, inst))
        if desc is not None and "vmsd_name" not in desc:
            out.no_layout += 1  # old-style section (no VMSD): its load function is code, not a layout
            continue
        try:
            f = judge_section(layouts, idstr=idstr, instance_id=inst, version_id=head["version_id"], body=bytes(data),
                              section_id=head.get("section_id"), family=fam, desc=desc)
        except (KeyError, TypeError, ValueError, IndexError, RecursionError) as e:
            f = Finding(Code.DEVICE_STATE_NOT_JUDGED, f"layout data not usable here: {type(e).__name__}")
        if f is None:
            out.loaded += 1
        elif f.code is Code.DEVICE_STATE_NOT_JUDGED:
            if f.message == "no destination layout for this section":
                out.no_layout += 1
            else:
                reason = f.message.split(" (")[0]
                out.not_judged[reason] = out.not_judged.get(reason, 0) + 1
        else:
            out.rejected += 1
            out.findings.append((off + f.at, f"{idstr} instance {inst}", f))
    return out
