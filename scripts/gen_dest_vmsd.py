#!/usr/bin/env python3
"""Regenerate the destination layouts shipped in conformance/rules/data/dest-vmsd-<version>.json.gz.

For each modelled QEMU version the layout is what that binary itself says:

* its `-dump-vmstate` for every machine type below (the declarations: fields in order, their
  version_id, whether a field_exists test gates them, C element size, element count of fixed
  arrays (10.0 dumps only), nested structs, subsections). The dumps of all machine types of
  one version are compared; they are identical for 7.2 and 10.0 (class VMSDs do not depend on
  the machine), which the data records.
* streams it saves itself (its VMDESCRIPTION trailer and bodies) with every shipped device set
  (conformance.qemu.DEVICE_SETS) on both machine-type families, once paused and once after
  the firmware ran: what each declared field is on the wire (info type name, element size,
  element count), which field_exists-gated fields and which subsections its own devices
  write, and its own values of the `... equal` / `int32 le` fields a destination checks.
  The 7.2 dump has no element counts: a fixed array's count comes from these streams (the
  same count in every capture) or from the 10.0 dump of an identically declared field; a
  field whose count varies, or that a stream leaves out although no test gates it (a
  variable array with no element), has a variable count. Each count records its source.
* the VMSDs QEMU registers outside device classes (cpu, timer, apic, ...) are not in the
  dump: their layout is what the streams show, and the subsection names the destination can
  know are the strings "<vmsd>/..." present in the binary (a superset: a name absent from the
  binary is one it cannot load).

Usage: python scripts/gen_dest_vmsd.py [--qemu VERSION=PATH ...] [--sources VERSION=DIR ...] [--work DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wireformat import vmstate  # noqa: E402
from wireformat.records import DeviceState, SectionHeader, VmDescription  # noqa: E402
from wireformat.reader import StreamReader  # noqa: E402

from conformance.rules.device_state import FORMAT, family_of  # noqa: E402

MACHINES = {"7.2": ["pc-i440fx-7.2", "pc-q35-7.2"],
            "10.0": ["pc-i440fx-7.2", "pc-q35-7.2", "pc-i440fx-10.0", "pc-q35-10.0"]}
RUN_SECONDS = 1.5  # long enough for SeaBIOS to program PCI config, RTC, PIT, ...
CHECKED_TYPES = ("equal", " le")  # info names of fields whose value the destination compares


# ----------------------------------------------------------------------------- declarations

class Interner:
    """Distinct VMSD shapes by name: nested descriptions are inlined in the dump everywhere
    they are used; the data keeps each shape once and refers to it as "name#k"."""

    def __init__(self):
        self.shapes: dict[str, list[dict]] = defaultdict(list)

    def add(self, v: dict) -> str:
        shapes = self.shapes[v["n"]]
        for k, s in enumerate(shapes):
            if s == v:
                return f"{v['n']}#{k}"
        shapes.append(v)
        return f"{v['n']}#{len(shapes) - 1}"


def decl(d: dict, interner: Interner) -> dict:
    """A dump Description as a compact declaration; nested ones interned."""
    fields = []
    for f in d.get("Fields", []):
        out = {"n": f["field"], "v": f["version_id"], "s": f["size"]}
        if f.get("field_exists"):
            out["x"] = 1
        if "num" in f:
            out["num"] = f["num"]
        if "Description" in f:
            out["d"] = interner.add(decl(f["Description"], interner))
        fields.append(out)
    subs = [interner.add(decl(s, interner)) for s in d.get("Subsections", [])]
    return {"n": d["name"], "v": d["version_id"], "m": d["minimum_version_id"], "f": fields, "s": subs}


def load_dump(path: Path, interner: Interner) -> dict[str, list[str]]:
    """{vmsd name: [shape refs]} of the top-level entries, with the QOM types of each."""
    top = json.loads(path.read_text())
    out: dict[str, dict[str, list[str]]] = defaultdict(dict)
    for type_name, entry in top.items():
        if type_name == "vmschkmachine":
            continue
        ref = interner.add(decl(entry["Description"], interner))
        out[entry["Description"]["name"]].setdefault(ref, []).append(type_name)
    return {name: [{"ref": r, "types": sorted(t)} for r, t in refs.items()] for name, refs in out.items()}


# ----------------------------------------------------------------------------- observations

def read_capture(path: Path) -> tuple[list[dict], dict]:
    """[(idstr, instance, version, body)] of FULL device sections and the VMDESCRIPTION."""
    sections, current, desc = [], {}, None
    with open(path, "rb") as f:
        for rec in StreamReader(f):
            if isinstance(rec, SectionHeader) and rec.is_full:
                current[rec.section_id] = rec
            elif isinstance(rec, DeviceState) and rec.section_id in current:
                h = current[rec.section_id]
                if h.section_type == 4:  # QEMU_VM_SECTION_FULL
                    sections.append({"idstr": h.idstr, "instance": h.instance_id, "version": h.version_id,
                                     "body": rec.data})
            elif isinstance(rec, VmDescription):
                desc = json.loads(rec.json)
    return sections, desc


_DUP = re.compile(r"^(.*)\[(\d+)\]$")


def group_entries(fields: list[dict]) -> list[tuple[str, list[dict]]]:
    """Consecutive VMDESCRIPTION entries of one declared field (a struct array is one entry
    per element with "index" 0..; 10.0 leaves the index off the last element)."""
    groups: list[tuple[str, list[dict]]] = []
    for e in fields:
        if groups and groups[-1][0] == e["name"] and groups[-1][1][0].get("index") == 0 and "array_len" not in e \
                and e.get("index") in (None, len(groups[-1][1])):
            groups[-1][1].append(e)
            continue
        groups.append((e["name"], [e]))
    return groups


def match_decl(fields: list[dict], name: str, start: int) -> int | None:
    """The declared field (index >= start) a VMDESCRIPTION entry name denotes: the name
    itself, or "<name>[k]" for the k-th of several declared fields sharing a name."""
    for i in range(start, len(fields)):
        if fields[i]["n"] == name:
            return i
    m = _DUP.match(name)
    if m:
        base, k = m[1], int(m[2])
        same = [i for i, f in enumerate(fields) if f["n"] == base]
        if len(same) > 1 and k < len(same) and same[k] >= start:
            return same[k]
    return None


class Observer:
    """Walks one version's own VMDESCRIPTIONs against its declarations."""

    def __init__(self, interner: Interner, tops: dict):
        self.interner = interner
        self.tops = tops
        # (shape ref, field index) -> facts seen for that declared field
        self.wire: dict[tuple[str, int], dict] = defaultdict(lambda: {"t": set(), "e": set(), "c": set(), "absent": 0})
        # (family, top vmsd, path) -> set of presence / values
        self.presence: dict[tuple, set] = defaultdict(set)
        self.values: dict[tuple, set] = defaultdict(set)
        self.outside: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))  # name -> family -> shapes
        self.subs_seen: dict[str, set] = defaultdict(set)
        self.unmatched: list[str] = []

    def shape(self, ref: str) -> dict:
        name, k = ref.rsplit("#", 1)
        return self.interner.shapes[name][int(k)]

    def device(self, family: str, dev: dict, decoded: vmstate.DecodedBody | None) -> None:
        name = dev.get("vmsd_name")
        if name is None:
            return  # old-style section: no VMSD
        variants = self.tops.get(name)
        if not variants:
            self.outside[name][family].append(observed_shape(
                dev, decoded.fields if decoded else None, decoded.subsections if decoded else None))
            for s in dev.get("subsections", []):
                self.subs_seen[name].add(s["vmsd_name"])
            return
        refs = [v["ref"] for v in variants if self.shape(v["ref"])["v"] == dev.get("version")] or \
            [v["ref"] for v in variants]
        for ref in refs:
            sink: list = []
            if self.walk(ref, dev, decoded.fields if decoded else None,
                         decoded.subsections if decoded else None, "", sink):
                for kind, key, val in sink:
                    (self.presence if kind == "p" else self.values)[(family, name, key)].add(val)
                return
        self.unmatched.append(f"{dev['name']} ({name})")

    def walk(self, ref: str, desc: dict, values, subvalues, path: str, sink: list) -> bool:
        """Align a description object with a declaration; False if they do not align."""
        shape = self.shape(ref)
        fields = shape["f"]
        groups = group_entries(desc.get("fields", []))
        vals = list(values) if values is not None else None
        vi = 0
        matched: dict[int, tuple[list[dict], list]] = {}
        start = 0
        for gname, entries in groups:
            i = match_decl(fields, gname, start)
            if i is None:
                return False
            nvals = len(entries)
            matched[i] = (entries, vals[vi:vi + nvals] if vals is not None else None)
            vi += nvals
            start = i + 1
        for i, f in enumerate(fields):
            key = f"{path}{i}"
            w = self.wire[(ref, i)]
            if i not in matched:
                if f.get("x"):
                    sink.append(("p", key, False))
                else:
                    w["absent"] += 1  # written by no test, yet absent: zero elements
                    w["c"].add(0)
                    sink.append(("v", f"{key}#n", 0))
                continue
            entries, fvals = matched[i]
            if f.get("x"):
                sink.append(("p", key, True))
            first = entries[0]
            count = first.get("array_len", len(entries))
            w["t"].add(first["type"])
            w["c"].add(count)
            if count != 1:  # the destination's own count: a VARRAY counted by a property uses it
                sink.append(("v", f"{key}#n", count))
            if first["type"] in ("struct", "vstruct") or "fields" in first:
                w["e"].add(None)
                if "d" not in f:
                    return False
                if "array_len" in first:  # a compressed struct array: one entry, values in a list
                    elems = [(first, fvals[0].value[k] if fvals else None) for k in range(count)]
                else:
                    elems = [(e, fvals[k].value if fvals is not None and k < len(fvals) else None)
                             for k, e in enumerate(entries)]
                for k, (e, ev) in enumerate(elems):
                    inner = e.get("struct", e)
                    if not self.walk(f["d"], inner, ev.fields if ev is not None else None,
                                     ev.subsections if ev is not None else None, f"{key}.{k}/", sink):
                        return False
            else:
                w["e"].add(first["size"])
                if any(first["type"].endswith(t) for t in CHECKED_TYPES) and fvals:
                    v = fvals[0].value
                    sink.append(("v", key, v[0] if isinstance(v, list) else v))
        subs = {self.shape(r)["n"]: r for r in shape["s"]}
        svals = {s.name: s for s in subvalues or ()}
        for s in desc.get("subsections", []):
            r = subs.get(s["vmsd_name"])
            if r is None:
                return False
            sv = svals.get(s["vmsd_name"])
            if not self.walk(r, s, sv.fields if sv else None, sv.subsections if sv else None,
                             f"{path}s:{s['vmsd_name']}/", sink):
                return False
        return True


def observed_shape(d: dict, values=None, subvalues=None) -> dict:
    """A VMSD known only from the streams: fields as written (with the destination's own
    value of fields it checks), subsections as written."""
    fields = []
    vals = list(values) if values is not None else None
    vi = 0
    for name, entries in group_entries(d.get("fields", [])):
        first = entries[0]
        fv = vals[vi:vi + len(entries)] if vals is not None else None
        vi += len(entries)
        f = {"n": name, "t": first["type"], "c": first.get("array_len", len(entries))}
        if first["type"] in ("struct", "vstruct") or "fields" in first:
            ev = fv[0].value if fv else None
            ev = ev[0] if isinstance(ev, list) else ev
            f["d"] = observed_shape(first.get("struct", first), ev.fields if ev is not None else None,
                                    ev.subsections if ev is not None else None)
        else:
            f["e"] = first["size"]
            if any(first["type"].endswith(t) for t in CHECKED_TYPES) and fv:
                v = fv[0].value
                f["val"] = v[0] if isinstance(v, list) else v
        fields.append(f)
    svals = {s.name: s for s in subvalues or ()}
    subs = {s["vmsd_name"]: observed_shape(s, svals[s["vmsd_name"]].fields if s["vmsd_name"] in svals else None,
                                           svals[s["vmsd_name"]].subsections if s["vmsd_name"] in svals else None)
            for s in d.get("subsections", [])}
    return {"n": d.get("vmsd_name", d.get("name")), "v": d.get("version"), "f": fields, "s": subs}


def binary_subsection_names(binary_path: Path, prefix: str) -> list[str]:
    """Every "<prefix>/..." NUL-terminated string in the binary: the subsection names it can know."""
    data = binary_path.read_bytes()
    pat = re.compile(re.escape(prefix.encode()) + rb"/[A-Za-z0-9_./-]{1,200}\x00")
    return sorted({m.group(0)[:-1].decode() for m in pat.finditer(data)})


_VAR_MACRO = re.compile(r"VMSTATE_([A-Z0-9_]*(?:VARRAY|VBUFFER)[A-Z0-9_]*)\(\s*([A-Za-z][^,()]*?)\s*,"
                        r"\s*[^,()]*,\s*([A-Za-z][^,()]*?)\s*,")
_NAME = re.compile(r'\.name\s*=\s*"([^"]+)"')


class VariableFields:
    """Fields whose element count (VMS_VARRAY_*) or size (VMS_VBUFFER) comes from another
    field, read from a QEMU source tree (read, never copied): (vmsd name, field) is variable
    when a file declaring a VMSD of that name has such a macro for that field; a VMSD whose
    name is not a literal anywhere falls back to the field name alone (a name shared with a
    fixed field elsewhere only makes that one "not judged" too, never judged wrongly). For a
    VARRAY the count field is kept (not for *_MULTIPLY, whose count is scaled)."""

    def __init__(self, src: Path | None):
        self.by_file: dict[str, dict[str, str | None]] = {}
        self.files_of: dict[str, set[str]] = defaultdict(set)
        self.anywhere: dict[str, set] = defaultdict(set)
        if src is None:
            return
        for sub in ("hw", "target/i386", "migration", "net", "system", "softmmu", "include", "backends", "ui",
                    "audio", "accel"):
            for path in sorted((src / sub).rglob("*.[ch]")) if (src / sub).is_dir() else ():
                try:
                    text = path.read_text(errors="replace")
                except OSError:
                    continue
                found: dict[str, str | None] = {}
                for m in _VAR_MACRO.finditer(text):
                    macro, fname, third = m[1], m[2].strip(), m[3].strip()
                    if fname.startswith("_") or "KNOWN" in macro:
                        continue  # a macro's own definition; *_KNOWN is a fixed count
                    count = third if "VARRAY" in macro and "MULTIPLY" not in macro else None
                    found[fname] = count
                    self.anywhere[fname].add(count)
                if found:
                    self.by_file[str(path)] = found
                for n in _NAME.findall(text):
                    self.files_of[n].add(str(path))

    def lookup(self, vmsd: str, field: str) -> tuple[bool, str | None]:
        files = self.files_of.get(vmsd)
        if files:
            hits = {self.by_file[f][field] for f in files if field in self.by_file.get(f, {})}
        else:
            hits = self.anywhere.get(field, set())
        if not hits:
            return False, None
        return True, next(iter(hits)) if len(hits) == 1 else None


# ----------------------------------------------------------------------------- merge

def wire_facts(version: str, obs: Observer, ref: str, i: int, f: dict, other: dict, var_names: "VariableFields") -> dict | None:
    """Type, element size and count of declared field i of shape ref, with the count's source.

    `other` holds the 10.0 facts by declaration (vmsd, field, C size, version): a 7.2 count
    agrees with it or the field is taken as variable; a 7.2 field no 7.2 stream wrote takes
    10.0's facts when the declaration is the same."""
    facts = obs.wire.get((ref, i))
    shape_name = obs.shape(ref)["n"]
    key = (shape_name, f["n"], f["s"], f["v"])
    if facts is not None and not facts["t"] and facts["absent"] and not f.get("x"):
        return {"c": "var", "cs": "streams: absent with no test (zero elements)"}
    if facts is None or not facts["t"]:
        var, cf = var_names.lookup(obs.shape(ref)["n"], f["n"])
        if var and "num" not in f:
            return {"c": "var", "cs": "QEMU sources: VARRAY/VBUFFER", **({"cf": cf} if cf else {})}
        if version == "7.2" and key in other:
            return {**other[key], "cs": f"10.0 for the same declaration ({other[key].get('cs', '?')})"}
        if "num" in f:
            return {"c": f["num"], "cs": "dump"}
        return None
    out: dict = {}
    if len(facts["t"]) == 1:
        out["t"] = next(iter(facts["t"]))
        if len(facts["e"]) == 1 and None not in facts["e"]:
            out["e"] = next(iter(facts["e"]))
    counts = facts["c"]
    theirs = other.get(key, {}).get("c") if version == "7.2" else None
    if "num" in f:
        out["c"], out["cs"] = f["num"], "dump"
    elif var_names.lookup(shape_name, f["n"])[0] and not (isinstance(theirs, int) and other[key].get("cs") == "dump"):
        out["c"], out["cs"] = "var", "QEMU sources: VARRAY/VBUFFER"
    elif facts["absent"] and not f.get("x"):
        out["c"], out["cs"] = "var", "streams: absent with no test (zero elements)"
    elif len(counts - {0}) > 1:
        out["c"], out["cs"] = "var", "streams: counts differ"
    elif version != "7.2" and max(counts) > 1:
        out["c"], out["cs"] = "var", "streams: an array the dump gives no fixed count"
    else:
        c = max(counts)
        if theirs == "var":
            out["c"], out["cs"] = "var", "10.0 declares the same field with a variable count"
        elif theirs is not None and theirs != c:
            out["c"], out["cs"] = "var", f"7.2 streams say {c}, 10.0 {theirs}"
        elif theirs is not None:
            out["c"], out["cs"] = c, "7.2 streams, and 10.0 for the same declaration"
        else:
            out["c"], out["cs"] = c, "streams (the same count in every capture)"
    if out.get("c") == "var":
        cf = var_names.lookup(shape_name, f["n"])[1]
        if cf:
            out["cf"] = cf
    return out


def build(version: str, binary, work: Path, other: dict, sources: Path | None) -> tuple[dict, dict]:
    from conformance.qemu import DEVICE_SETS, capture_stream, dump_vmstate

    interner = Interner()
    var_names = VariableFields(sources)
    dumps = {}
    for m in MACHINES[version]:
        p = dump_vmstate(binary, m, work / f"dump-{version}-{m}.json")
        raw = json.loads(p.read_text())
        raw.pop("vmschkmachine", None)
        dumps[m] = raw
    first = MACHINES[version][0]
    identical = [m for m in MACHINES[version] if dumps[m] == dumps[first]]
    if len(identical) != len(MACHINES[version]):
        raise SystemExit(f"QEMU {version}: -dump-vmstate differs between machine types "
                         f"{sorted(set(MACHINES[version]) - set(identical))} and {first}: extend the format")
    tops = load_dump(work / f"dump-{version}-{first}.json", interner)
    obs = Observer(interner, tops)
    captures = []
    for m in MACHINES[version]:
        fam = family_of(m)
        for ds in DEVICE_SETS:
            for state, secs in (("paused", 0.0), ("running", RUN_SECONDS)):
                out = work / f"cap-{version}-{m}-{ds}-{state}.bin"
                capture_stream(binary, out, machine=m, devices=ds, run_seconds=secs)
                sections, desc = read_capture(out)
                captures.append(f"{m} {ds} {state}")
                by_key = {(d["name"], d["instance_id"]): d for d in desc["devices"]}
                for s in sections:
                    dev = by_key.get((s["idstr"], s["instance"]))
                    if dev is None:
                        continue
                    try:
                        decoded = vmstate.decode_body(dev, s["body"])
                    except ValueError:
                        decoded = None
                    obs.device(fam, dev, decoded)
    # annotate every declared field with its wire facts
    provenance = defaultdict(int)
    shapes = {}
    for name, lst in interner.shapes.items():
        for k, shape in enumerate(lst):
            ref = f"{name}#{k}"
            fields = []
            for i, f in enumerate(shape["f"]):
                g = dict(f)
                w = wire_facts(version, obs, ref, i, f, other, var_names)
                if w:
                    g["w"] = w
                    provenance[w.get("cs", "no count")] += 1
                else:
                    provenance["not seen in any stream"] += 1
                fields.append(g)
            shapes[ref] = {**shape, "f": fields}
    presence: dict[str, dict[str, dict[str, object]]] = defaultdict(lambda: defaultdict(dict))
    for (fam, top, key), seen in obs.presence.items():
        presence[fam][top][key] = next(iter(seen)) if len(seen) == 1 else None
    values: dict[str, dict[str, dict[str, object]]] = defaultdict(lambda: defaultdict(dict))
    for (fam, top, key), seen in obs.values.items():
        values[fam][top][key] = next(iter(seen)) if len(seen) == 1 else None
    outside = {}
    for name, by_family in obs.outside.items():
        fams = {}
        for fam, seen in by_family.items():
            distinct = []
            for sh in seen:
                if sh not in distinct:
                    distinct.append(sh)
            agree = all(d["f"] == distinct[0]["f"] and d["v"] == distinct[0]["v"] for d in distinct)
            subs: dict = {}
            for d in distinct:
                for sn, sd in d["s"].items():
                    subs.setdefault(sn, []).append(sd)
            fams[fam] = {"v": distinct[0]["v"], "f": distinct[0]["f"] if agree else None,
                         "s": {sn: (sds[0] if all(x == sds[0] for x in sds) else None) for sn, sds in subs.items()}}
        outside[name] = {"families": fams, "names": binary_subsection_names(Path(binary.path), name)}
        missing = obs.subs_seen[name] - set(outside[name]["names"])
        if missing:
            raise SystemExit(f"QEMU {version}: subsections {sorted(missing)} of {name} not found in the binary")
    data = {
        "format": FORMAT, "version": version, "qemu": binary.full_version,
        "machines": MACHINES[version],
        "note": "generated by scripts/gen_dest_vmsd.py from the binary's -dump-vmstate (identical for all "
                "machines listed) and its own streams; see the script for what each key means",
        "captures": captures,
        "tops": tops, "shapes": shapes, "presence": presence, "values": values, "outside": outside,
        "count_sources": dict(sorted(provenance.items())),
        "sources_read": sources is not None,
        "unaligned": sorted(set(obs.unmatched)),
    }
    facts = {}
    for ref, shape in shapes.items():
        for f in shape["f"]:
            if "w" in f:
                facts[(shape["n"], f["n"], f["s"], f["v"])] = f["w"]
    return data, facts


def main() -> int:
    from conformance.qemu import parse_pairs, require

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--qemu", action="append", default=[], metavar="VERSION=PATH")
    ap.add_argument("--work", help="folder for dumps and captures (default: a temporary one)")
    ap.add_argument("--out", default=str(ROOT / "conformance" / "rules" / "data"))
    ap.add_argument("--sources", action="append", default=[], metavar="VERSION=DIR",
                    help="QEMU source tree of that version (apt-get source qemu): fields a VARRAY/VBUFFER macro "
                    "declares get a variable count (without it, only what the streams show)")
    args = ap.parse_args()
    pairs = parse_pairs(",".join(args.qemu)) if args.qemu else None
    work = Path(args.work or tempfile.mkdtemp(prefix="gen-dest-vmsd-"))
    work.mkdir(parents=True, exist_ok=True)
    nums: dict = {}
    for version in ("10.0", "7.2"):  # 10.0 first: its dump's counts corroborate 7.2's
        srcs = dict(x.split("=", 1) for x in args.sources)
        data, got = build(version, require(version, pairs), work, nums,
                          Path(srcs[version]) if version in srcs else None)
        nums.update(got)
        out = Path(args.out) / f"dest-vmsd-{version}.json.gz"
        raw = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
        out.write_bytes(gzip.compress(raw, 9, mtime=0))
        print(f"{out}: {len(data['shapes'])} VMSD shapes, {len(data['outside'])} outside the dump, "
              f"counts: {data['count_sources']}, unaligned: {data['unaligned']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
