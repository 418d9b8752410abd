"""Compare two QEMU binaries' `-dump-vmstate` for one machine type and say which
differences break migration in which direction.

A is one binary, B the other; "A->B" is a migration from A (source) to B (destination).
Sections are matched by vmsd name, as the stream's section idstr names them (a QOM type
renamed between releases keeps its sections); vmsd names several QOM types share with
different descriptions are matched type by type.

What decides a direction S->R, per vmsd (the facts the loader applies):
* version: S writes its `version_id`; R loads it only if `R.minimum_version_id <= version <=
  R.version_id`, else the load fails. Subsections carry their own version the same way;
  nested structures (struct fields) carry none: each side walks its own nested description.
* fields: R reads, in order, its fields with `version_id <=` the version in the stream (for
  nested structures: its own version); S writes its fields up to the version it sends. The
  byte layout must line up: same number of fields, same size (for a struct field: the nested
  description, compared in turn; the C size of the structure in the dump is ignored). Names do
  not travel: a renamed field is harmless. Fields with an existence callback (`field_exists`)
  are written and read only when the callback says so at run time.
* subsections: sent only when the source's `needed` callback says so; R fails on a subsection
  it does not know (ENOENT), and ignores one it knows that is absent.
* sections: a device section R lacks fails the load (unknown section) only if S sends it,
  i.e. the guest has the device. A device one side cannot migrate at all (its description
  has no state: QEMU refuses to migrate a guest with it) is treated the same way: that side
  never sends it (no guest with it ever migrated from there: nothing to gate), and a stream
  with it fails to load there if the other side sends it.

Verdicts per direction: `breaks` (the load fails whenever the section is in the stream),
`would break if sent` (it fails only if something conditional is sent or a run-time callback
decides so: a section of a device the guest may not have, a subsection, an existence-checked
field), `compatible` (the difference does not matter on the wire), `not judged` (a vmsd one
dump cannot list: registered outside device classes). Evidence from a real stream of the
source (its VMDESCRIPTION says which sections and subsections it wrote) turns `would break if
sent` into `breaks` for sections and subsections it did send. The same stream is also judged
by `check`'s own judge (conformance.check.judge) as a destination of the other side's version
and machine type loads it (`judge_stream`): what a dump cannot say (device layouts, value
rules, instance ids, RAM blocks); a stream it rejects makes that direction breaking.

-dump-vmstate limits: field sizes are C sizes of one element; 7.2 dumps have no element
counts (`num`), so an array that changes length only is invisible against a 7.2 dump.
"""

from __future__ import annotations

import difflib
import json
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from conformance.versions import NEWEST, VERSIONS
from wireformat.vmstate import (
    NOT_IN_DUMP_VMSTATE,
    DumpField,
    DumpVmstate,
    VmsdInfo,
    VmstateDecodeError,
    parse_dump_vmstate,
    parse_vmdescription,
)

BREAKS = "breaks"
WOULD_BREAK = "would break if sent"
COMPATIBLE = "compatible"
NOT_JUDGED = "not judged"

A_TO_B, B_TO_A = "A->B", "B->A"
DIRECTIONS = (A_TO_B, B_TO_A)

EXIT_OK, EXIT_BREAKING, EXIT_ERROR = 0, 1, 2

_RANK = {COMPATIBLE: 0, NOT_JUDGED: 0, WOULD_BREAK: 1, BREAKS: 2}

__all__ = [
    "A_TO_B", "B_TO_A", "BREAKS", "COMPATIBLE", "NOT_JUDGED", "WOULD_BREAK", "Difference", "Evidence",
    "Judged", "VmstateDiff", "add_vmstate_diff_parser", "cmd_vmstate_diff", "diff_dumps",
    "evidence_from_vmdescription", "evidence_from_stream", "judge_stream", "load_dump",
]


# ---------------------------------------------------------------- results

@dataclass
class Verdict:
    verdict: str
    why: str = ""
    condition: str | None = None  # what a "would break if sent" waits for: device, subsection, exists
    evidence: str | None = None  # what a real stream of the source showed

    def as_json(self) -> dict:
        return {"verdict": self.verdict, "why": self.why, "condition": self.condition, "evidence": self.evidence}


@dataclass
class Difference:
    section: str  # top-level vmsd name (what the stream's idstr ends with)
    path: str  # where in it: "e1000", "esp.drq_state"-style nesting, "i8259/ltim" subsections
    kind: str  # section-only-in-a/b, version, fields, subsection-only-in-a/b, not-in-dump
    detail: str
    verdicts: dict[str, Verdict]
    types: tuple[str, ...] = ()  # QOM types of the section
    subsection: str | None = None  # the subsection this difference is in (its vmsd name), if any

    def verdict(self, direction: str) -> str:
        return self.verdicts[direction].verdict

    @property
    def worst(self) -> str:
        return max((v.verdict for v in self.verdicts.values()), key=_RANK.__getitem__)

    def as_json(self) -> dict:
        return {"section": self.section, "path": self.path, "kind": self.kind, "detail": self.detail,
                "types": list(self.types), "subsection": self.subsection,
                "directions": {d: v.as_json() for d, v in self.verdicts.items()}}


@dataclass
class VmstateDiff:
    a_name: str
    b_name: str
    machine_a: str | None
    machine_b: str | None
    sections_a: int
    sections_b: int
    differences: list[Difference] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    evidence: dict[str, str] = field(default_factory=dict)  # direction -> stream name
    ignored: list[Difference] = field(default_factory=list)  # left out on request (--ignore)
    # direction -> the source's real stream judged as the other side's destination loads it
    # (check's own judge: conformance.check.judge), beside its evidence
    judged: dict[str, "Judged"] = field(default_factory=dict)

    def breaking(self, direction: str | None = None, *, strict: bool = False) -> list[Difference]:
        dirs = [direction] if direction else list(DIRECTIONS)
        bad = {BREAKS, WOULD_BREAK} if strict else {BREAKS}
        return [d for d in self.differences if any(d.verdict(x) in bad for x in dirs)]

    def rejected(self, direction: str | None = None) -> list[str]:
        """The directions whose judged stream the destination rejects."""
        dirs = [direction] if direction else list(DIRECTIONS)
        return [d for d in dirs if d in self.judged and self.judged[d].rejected]

    def exit_code(self, direction: str | None = None, *, strict: bool = False) -> int:
        return EXIT_BREAKING if self.breaking(direction, strict=strict) or self.rejected(direction) else EXIT_OK

    def summary(self) -> dict:
        out = {}
        for d in DIRECTIONS:
            out[d] = {v: sum(1 for x in self.differences if x.verdict(d) == v)
                      for v in (BREAKS, WOULD_BREAK, COMPATIBLE, NOT_JUDGED)}
        return out

    def as_json(self, direction: str | None = None, strict: bool = False) -> dict:
        return {"a": {"name": self.a_name, "machine": self.machine_a, "sections": self.sections_a},
                "b": {"name": self.b_name, "machine": self.machine_b, "sections": self.sections_b},
                "verdict": "breaking" if self.exit_code(direction, strict=strict) else "no breaking difference",
                "summary": self.summary(), "warnings": self.warnings, "evidence": self.evidence,
                "judged": {d: j.as_json() for d, j in self.judged.items()},
                "ignored": sorted({d.section for d in self.ignored}),
                "differences": [d.as_json() for d in self.differences]}

    def format(self, *, show_compatible: bool = False, direction: str | None = None) -> str:
        lines = [f"A: {self.a_name} ({self.machine_a or 'machine ?'}, {self.sections_a} vmsds)",
                 f"B: {self.b_name} ({self.machine_b or 'machine ?'}, {self.sections_b} vmsds)"]
        for d, name in self.evidence.items():
            lines.append(f"evidence for {d}: sections and subsections written by {name}")
        for d, j in self.judged.items():
            lines += j.format(d)
        lines += [f"warning: {w}" for w in self.warnings]
        if self.ignored:
            lines.append(f"ignored on request: {len(self.ignored)} differences of "
                         f"{', '.join(sorted({d.section for d in self.ignored}))}")
        dirs = [direction] if direction else list(DIRECTIONS)
        for verdict, title in ((BREAKS, "Breaking"), (WOULD_BREAK, "Would break if sent")):
            rows = [(d, x) for d in self.differences for x in dirs if d.verdict(x) == verdict]
            if not rows:
                continue
            lines.append("")
            lines.append(f"{title} ({len(rows)}):")
            for d, x in rows:
                v = d.verdicts[x]
                types = f" [{', '.join(d.types[:3])}{', ...' if len(d.types) > 3 else ''}]" if d.types else ""
                lines.append(f"  {x} {d.path}{types}: {d.detail}")
                lines.append(f"      {v.why}" + (f" ({v.evidence})" if v.evidence else ""))
        rest = [d for d in self.differences if all(d.verdict(x) in (COMPATIBLE, NOT_JUDGED) for x in dirs)]
        if rest:
            lines.append("")
            if show_compatible:
                lines.append(f"Compatible or not judged ({len(rest)}):")
                for d in rest:
                    lines.append(f"  {d.path}: {d.detail} ({'; '.join(sorted({d.verdicts[x].why for x in dirs}))})")
            else:
                lines.append(f"{len(rest)} more differences do not break either direction (--all lists them)")
        s = self.summary()
        lines.append("")
        for x in dirs:
            judged = self.judged.get(x)
            said = "" if judged is None else f"; its stream {'REJECTED' if judged.rejected else judged.verdict}"
            lines.append(f"{x}: {s[x][BREAKS]} breaking, {s[x][WOULD_BREAK]} would break if sent{said}")
        return "\n".join(lines)


# ---------------------------------------------------------------- comparison

def _both(v_ab: Verdict, v_ba: Verdict) -> dict[str, Verdict]:
    return {A_TO_B: v_ab, B_TO_A: v_ba}


def _ok(why: str) -> Verdict:
    return Verdict(COMPATIBLE, why)


def _bad(conditional: str | None, why: str, condition: str | None = None) -> Verdict:
    """BREAKS, or WOULD_BREAK when the thing is conditional (`conditional`: why)."""
    if conditional or condition:
        return Verdict(WOULD_BREAK, why, condition or conditional)
    return Verdict(BREAKS, why)


def _bytes(n: int) -> str:
    return "1 byte" if n == 1 else f"{n} bytes"


def _fmt_attrs(f: DumpField) -> str:
    size = f"struct {f.struct.name}" if f.struct is not None else _bytes(f.size) + (f" x{f.num}" if f.num else "")
    extra = ", exists-callback" if f.field_exists else ""
    return f"v{f.version_id}, {size}{extra}"


def _fmt_field(f: DumpField) -> str:
    return f"{f.name} ({_fmt_attrs(f)})"


def _shape(f: DumpField, use_num: bool) -> tuple:
    """What a field looks like on the wire, names aside (a struct: judged by its own entry)."""
    if f.struct is not None:
        return ("struct", f.field_exists)
    return ("scalar", f.size, f.num if use_num else None, f.field_exists)


def _selected(fields: Iterable[DumpField], version: int) -> list[DumpField]:
    return [f for f in fields if f.field_exists or f.version_id <= version]


@dataclass
class _Tok:
    """A piece of the byte layout: a run of plain fields, or one struct / variable-size /
    existence-checked field."""

    kind: str  # "run", "struct", "var", "opt"
    size: int = 0  # bytes known
    unknown: tuple[int, ...] = ()  # element sizes of arrays whose element count is unknown (>= 1)
    names: tuple[str, ...] = ()
    exists: bool = False
    unknown_names: tuple[str, ...] = ()


def _tokens(fields: list[DumpField], counts_known: bool, hints: Mapping[str, int]) -> list[_Tok]:
    out: list[_Tok] = []
    for f in fields:
        if f.struct is not None or f.size == 0:
            out.append(_Tok("struct" if f.struct is not None else "var", names=(f.name,), exists=f.field_exists))
            continue
        if f.num is not None or counts_known:  # a dump with counts omits them for plain fields
            num: int | None = f.num if f.num is not None else 1
        else:
            num = hints.get(f.name, 1 if f.name == "unused" else None)  # unused buffers: size is the byte count
        known, unknown = (f.size * num, ()) if num is not None else (f.size, (f.size,))
        if num is None:
            known = 0
        un = (f.name,) if unknown else ()
        if f.field_exists:
            out.append(_Tok("opt", known, unknown, (f.name,), True, un))
        elif out and out[-1].kind == "run":
            t = out[-1]
            out[-1] = _Tok("run", t.size + known, t.unknown + unknown, t.names + (f.name,), False, t.unknown_names + un)
        else:
            out.append(_Tok("run", known, unknown, (f.name,), False, un))
    return out


def _match(x: _Tok, y: _Tok) -> str:
    """"equal", "differ", "assume" (equal if the arrays of unknown length have one element),
    or "unknown" (equal only for other element counts, or no way to tell)."""
    if x.kind in ("struct", "var"):
        return "equal"  # nested structures are judged on their own
    if not x.unknown and not y.unknown:
        return "equal" if x.size == y.size else "differ"
    if x.size + sum(x.unknown) == y.size + sum(y.unknown):
        return "assume"
    if x.unknown and y.unknown:
        return "unknown"
    fixed, var = (x, y) if not x.unknown else (y, x)
    rest = fixed.size - var.size - sum(var.unknown)  # every unknown count at least 1
    g = 0
    for e in var.unknown:
        g = math.gcd(g, e)
    return "unknown" if rest > 0 and rest % g == 0 else "differ"


def _unknown_names(toks: Iterable[_Tok]) -> list[str]:
    return list(dict.fromkeys(n for t in toks for n in t.unknown_names))


def _tok_text(t: _Tok) -> str:
    names = ", ".join(t.names) if len(t.names) <= 4 else f"{', '.join(t.names[:3])}, ... ({len(t.names)} fields)"
    if t.kind == "struct":
        return f"struct {names}"
    if t.kind == "var":
        return f"{names} (variable size)"
    size = _bytes(t.size) if not t.unknown else \
        f"{_bytes(t.size + sum(t.unknown))} or more: {', '.join(t.unknown_names)} may be arrays"
    return f"{names} ({size}{', exists-callback' if t.exists else ''})"


class _Differ:
    def __init__(self, counts_a: bool = True, counts_b: bool = True) -> None:
        self.out: list[Difference] = []
        self.counts_a, self.counts_b = counts_a, counts_b  # does the dump give element counts?

    def add(self, section: str, path: str, kind: str, detail: str, verdicts: dict[str, Verdict],
            types: tuple[str, ...], subsection: str | None) -> None:
        self.out.append(Difference(section, path, kind, detail, verdicts, types, subsection))

    # one vmsd (top level, subsection or nested structure) present on both sides
    def vmsd(self, a: VmsdInfo, b: VmsdInfo, *, section: str, path: str, types: tuple[str, ...],
             level: str, conditional: str | None, subsection: str | None) -> None:
        """level: "section" / "subsection" carry a version on the wire; "struct" does not."""
        versioned = level != "struct"
        v_ab = self._version_verdict(a, b, versioned, conditional)
        v_ba = self._version_verdict(b, a, versioned, conditional)
        if (a.version_id, a.minimum_version_id) != (b.version_id, b.minimum_version_id):
            self.add(section, path, "version",
                     f"version {a.version_id} (minimum {a.minimum_version_id}) in A, "
                     f"{b.version_id} (minimum {b.minimum_version_id}) in B", _both(v_ab, v_ba), types, subsection)
        self._fields(a, b, section=section, path=path, types=types, versioned=versioned,
                     conditional=conditional, subsection=subsection)
        self._subsections(a, b, section=section, path=path, types=types, conditional=conditional)

    @staticmethod
    def _version_verdict(s: VmsdInfo, r: VmsdInfo, versioned: bool, conditional: str | None) -> Verdict:
        if not versioned:
            return _ok("nested structures carry no version: each side walks its own description")
        if r.minimum_version_id <= s.version_id <= r.version_id:
            return _ok(f"the destination accepts version {s.version_id} "
                       f"({r.minimum_version_id}..{r.version_id})")
        if s.version_id > r.version_id:
            why = (f"the source writes version {s.version_id}, newer than the destination's "
                   f"{r.version_id}: the load fails")
        else:
            why = (f"the source writes version {s.version_id}, older than the destination's minimum "
                   f"{r.minimum_version_id}: the load fails")
        return _bad(conditional, why)

    def _fields(self, a: VmsdInfo, b: VmsdInfo, *, section: str, path: str, types: tuple[str, ...],
                versioned: bool, conditional: str | None, subsection: str | None) -> None:
        use_num = self.counts_a and self.counts_b  # element counts are comparable only if both dumps give them
        # the structural description, direction aside
        keys_a = [(f.name, _shape(f, use_num), f.version_id) for f in a.fields]
        keys_b = [(f.name, _shape(f, use_num), f.version_id) for f in b.fields]
        changes: list[str] = []
        pairs: list[tuple[DumpField, DumpField]] = []
        sm = difflib.SequenceMatcher(a=[k[0] for k in keys_a], b=[k[0] for k in keys_b], autojunk=False)
        for op, i1, i2, j1, j2 in sm.get_opcodes():
            if op == "equal":
                for fa, fb in zip(a.fields[i1:i2], b.fields[j1:j2]):
                    pairs.append((fa, fb))
                    if _shape(fa, use_num) != _shape(fb, use_num) or fa.version_id != fb.version_id:
                        changes.append(f"{fa.name}: {_fmt_attrs(fa)} -> {_fmt_attrs(fb)}")
                continue
            olds, news = a.fields[i1:i2], b.fields[j1:j2]
            if op == "replace" and len(olds) == len(news):
                for fa, fb in zip(olds, news):
                    pairs.append((fa, fb))
                    same = _shape(fa, use_num) == _shape(fb, use_num) and fa.version_id == fb.version_id
                    changes.append(f"{fa.name} renamed {fb.name}" if same
                                   else f"{_fmt_field(fa)} replaced by {_fmt_field(fb)}")
                continue
            changes += [f"removed {_fmt_field(f)}" for f in olds]
            changes += [f"added {_fmt_field(f)}" for f in news]
        # nested structures: compared on their own
        for fa, fb in pairs:
            if fa.struct is not None and fb.struct is not None:
                guarded = "exists" if fa.field_exists or fb.field_exists else None
                self.vmsd(fa.struct, fb.struct, section=section, path=f"{path}.{fa.name}", types=types,
                          level="struct", conditional=conditional or guarded, subsection=subsection)
        if not changes:
            return
        renamed = [(fa, fb) for fa, fb in pairs if fa.name != fb.name and fa.size == fb.size
                   and (fa.struct is None) == (fb.struct is None)]
        v_ab = self._layout(a, b, versioned, conditional, self.counts_a, self.counts_b, renamed)
        v_ba = self._layout(b, a, versioned, conditional, self.counts_b, self.counts_a,
                            [(fb, fa) for fa, fb in renamed])
        self.add(section, path, "fields", "; ".join(changes), _both(v_ab, v_ba), types, subsection)

    def _layout(self, s: VmsdInfo, r: VmsdInfo, versioned: bool, conditional: str | None, s_counts: bool,
                r_counts: bool, renamed: list[tuple[DumpField, DumpField]]) -> Verdict:
        """Do the bytes S writes line up with those R reads? Adjacent plain fields are one run of
        bytes (an unused buffer may replace several fields); struct fields, fields of variable
        size and fields with an existence callback stand on their own."""
        if versioned and not (r.minimum_version_id <= s.version_id <= r.version_id):
            return _ok("not reached: the version already decides")
        sent = _selected(s.fields, s.version_id)
        read = _selected(r.fields, s.version_id if versioned else r.version_id)
        # a dump without element counts borrows them from the other dump's field of the same name
        # (when neither dump gives it, the same-named fields are taken to have the same count:
        # it multiplies both sides alike, so 1 stands for it)
        hint_s = {f.name: f.num if f.num is not None else 1 for f in r.fields}
        hint_r = {f.name: f.num if f.num is not None else 1 for f in s.fields}
        for fs, fr in renamed:  # a renamed field (same element size) is the same field
            hint_s.setdefault(fs.name, fr.num if fr.num is not None else 1)
            hint_r.setdefault(fr.name, fs.num if fs.num is not None else 1)
        ts, tr = _tokens(sent, s_counts, hint_s), _tokens(read, r_counts, hint_r)
        skipped = [f.name for f in r.fields if f not in read]
        skip_note = (f" (the destination skips {', '.join(skipped)}: newer than version {s.version_id})"
                     if skipped else "")
        if len(ts) == len(tr) and all(x.kind == y.kind and x.exists == y.exists for x, y in zip(ts, tr)):
            unsure, assumed = [], []
            bad = None
            for x, y in zip(ts, tr):
                m = _match(x, y)
                if m == "differ":
                    bad = (x, y)
                    break
                if m == "unknown":
                    unsure.append((x, y))
                elif m == "assume":
                    assumed.append(x if x.unknown else y)
            if bad is None:
                if unsure:
                    x, y = unsure[0]
                    return Verdict(NOT_JUDGED, f"{_tok_text(x)} against {_tok_text(y)}: equal only for the right "
                                   f"element counts, which a dump without element counts does not give")
                if assumed:
                    names = ", ".join(_unknown_names(assumed))
                    return _ok(f"the fields line up if the fields without a counterpart ({names}) are not arrays "
                               f"(one dump gives no element counts)" + skip_note)
                return _ok("the fields line up" + skip_note)
            x, y = bad
            why = f"the source writes {_tok_text(x)} where the destination reads {_tok_text(y)}"
        else:
            sm = difflib.SequenceMatcher(a=[t.kind for t in ts], b=[t.kind for t in tr], autojunk=False)
            op, i1, i2, j1, j2 = next(o for o in sm.get_opcodes() if o[0] != "equal")
            w, rd = ts[i1:i2], tr[j1:j2]
            if w and rd:
                why = (f"the source writes {', '.join(map(_tok_text, w))} where the destination reads "
                       f"{', '.join(map(_tok_text, rd))}")
            elif w:
                why = f"the source writes {', '.join(map(_tok_text, w))} that the destination does not read"
            else:
                why = f"the destination reads {', '.join(map(_tok_text, rd))} that the source does not write"
        exists = list(dict.fromkeys(n for t in (*ts, *tr) if t.exists for n in t.names))
        if exists:
            names = ", ".join(exists[:6]) + (f" and {len(exists) - 6} more" if len(exists) > 6 else "")
            return Verdict(WOULD_BREAK, f"{why}; whether the bytes line up depends on existence callbacks "
                           f"({names})", "exists")
        return _bad(conditional, why)

    def _subsections(self, a: VmsdInfo, b: VmsdInfo, *, section: str, path: str, types: tuple[str, ...],
                     conditional: str | None) -> None:
        names_a, names_b = set(a.subsections), set(b.subsections)
        for name in a.subsections:
            sub_path = _sub_path(path, name)
            if name not in names_b:
                self.add(section, sub_path, "subsection-only-in-a", f"subsection {name} only in A",
                         _both(Verdict(WOULD_BREAK, "A sends it only when needed; B does not know it and fails "
                                       "(ENOENT) if it comes", "subsection"),
                               _ok("B never sends it; A keeps its own state for it")), types, name)
            else:
                self.vmsd(a.subsection(name), b.subsection(name), section=section, path=sub_path, types=types,
                          level="subsection", conditional=conditional or "subsection", subsection=name)
        for name in b.subsections:
            if name not in names_a:
                self.add(section, _sub_path(path, name), "subsection-only-in-b", f"subsection {name} only in B",
                         _both(_ok("A never sends it; B keeps its own state for it"),
                               Verdict(WOULD_BREAK, "B sends it only when needed; A does not know it and fails "
                                       "(ENOENT) if it comes", "subsection")), types, name)


def _sub_path(parent: str, name: str) -> str:
    base = parent.split(".")[0].split("/")[0]
    return f"{parent}/{name[len(base) + 1:]}" if name.startswith(base + "/") and "." not in parent \
        else f"{parent}[{name}]"


def _variants(info: VmsdInfo) -> list[VmsdInfo]:
    return [info, *info.alternatives]


def _pair_variants(va: list[VmsdInfo], vb: list[VmsdInfo]) -> tuple[list[tuple[VmsdInfo, VmsdInfo]], list, list]:
    """Pair the variants of one vmsd name by QOM type; leftovers pair by order when one each."""
    pairs, used_b = [], set()
    rest_a = []
    for x in va:
        match = next((i for i, y in enumerate(vb) if i not in used_b and set(x.type_names) & set(y.type_names)), None)
        if match is None:
            rest_a.append(x)
        else:
            used_b.add(match)
            pairs.append((x, vb[match]))
    rest_b = [y for i, y in enumerate(vb) if i not in used_b]
    if len(rest_a) == 1 and len(rest_b) == 1:
        pairs.append((rest_a[0], rest_b[0]))
        rest_a, rest_b = [], []
    return pairs, rest_a, rest_b


def _has_counts(dump: DumpVmstate) -> bool:
    """Whether the dump gives element counts of arrays (`num`; 10.0 dumps do, 7.2 dumps do not)."""
    def walk(v: VmsdInfo) -> bool:
        return any(f.num is not None or (f.struct is not None and walk(f.struct)) for f in v.fields) or \
            any(walk(x) for x in v.subsection_infos)
    return any(walk(v) for info in dump.values() for v in _variants(info))


def diff_dumps(a: DumpVmstate, b: DumpVmstate, *, a_name: str = "A", b_name: str = "B") -> VmstateDiff:
    """Every difference between two parsed -dump-vmstate files, with per-direction verdicts."""
    out = VmstateDiff(a_name, b_name, a.machine, b.machine, len(a), len(b))
    if a.machine and b.machine and a.machine != b.machine:
        out.warnings.append(f"the dumps are of different machine types ({a.machine} vs {b.machine}): "
                            f"compare dumps of one machine type")
    d = _Differ(_has_counts(a), _has_counts(b))
    for name in sorted(set(a) | set(b)):
        ia, ib = a.get(name), b.get(name)
        if ia is None or ib is None:
            have = ia or ib
            side = "A" if ia is not None else "B"
            types = tuple(sorted({t for v in _variants(have) for t in v.type_names}))
            if name in NOT_IN_DUMP_VMSTATE:
                nj = Verdict(NOT_JUDGED, f"{'B' if side == 'A' else 'A'}'s -dump-vmstate cannot list {name} "
                             f"(registered outside device classes): its absence says nothing")
                d.add(name, name, "not-in-dump", f"section {name} listed by {side} only", _both(nj, nj), types, None)
                continue
            lacks = "B" if side == "A" else "A"
            miss = Verdict(WOULD_BREAK, f"{lacks} has no such section: the load fails (unknown section) "
                           f"if the guest has the device", "device")
            fine = _ok(f"{lacks} never sends it")
            d.add(name, name, f"section-only-in-{side.lower()}", f"section {name} only in {side}",
                  _both(miss, fine) if side == "A" else _both(fine, miss), types, None)
            continue
        pairs, rest_a, rest_b = _pair_variants(_variants(ia), _variants(ib))
        for x, y in pairs:
            types = tuple(sorted(set(x.type_names) | set(y.type_names)))
            shared = sorted(set(x.type_names) & set(y.type_names)) or types
            label = name if len(pairs) == 1 else f"{name} ({', '.join(shared)})"
            if x.migratable != y.migratable:  # one side cannot migrate a guest with the device at all
                side, other = ("A", "B") if not x.migratable else ("B", "A")
                never = _ok(f"{side} refuses to migrate a guest with this device (its description has no "
                            f"state: QEMU blocks the migration), so no stream from {side} carries it")
                miss = Verdict(WOULD_BREAK, f"{side} cannot migrate this device at all: a guest with it that {other} "
                               f"migrates fails to load in {side} (nothing there reads its state)", "device")
                d.add(name, label, f"unmigratable-in-{side.lower()}", f"{name} cannot migrate in {side}, can in {other}",
                      _both(never, miss) if side == "A" else _both(miss, never), types, None)
                continue
            d.vmsd(x, y, section=name, path=label, types=types, level="section", conditional=None, subsection=None)
        for side, rest in (("a", rest_a), ("b", rest_b)):
            for v in rest:
                d.add(name, f"{name} ({', '.join(v.type_names)})", f"variant-only-in-{side}",
                      f"a variant of {name} for {', '.join(v.type_names)} only in {side.upper()}",
                      _both(_ok("QOM types only one side has cannot be in both guests"),
                            _ok("QOM types only one side has cannot be in both guests")), v.type_names, None)
    out.differences = d.out
    return out


# ---------------------------------------------------------------- evidence from real streams

@dataclass
class Evidence:
    """What a real source wrote: vmsd name of each section -> vmsd names of the subsections it
    wrote (nested structures' subsections included)."""

    name: str
    sections: dict[str, set[str]]

    def sent(self, section: str, subsection: str | None = None) -> bool:
        subs = self.sections.get(section)
        if subs is None:
            return False
        return subsection is None or subsection in subs


def _collect_subsections(obj: Any, into: set[str]) -> None:
    if isinstance(obj, dict):
        for s in obj.get("subsections", []) or []:
            if isinstance(s, dict) and isinstance(s.get("vmsd_name"), str):
                into.add(s["vmsd_name"])
        for v in obj.values():
            if isinstance(v, (dict, list)):
                _collect_subsections(v, into)
    elif isinstance(obj, list):
        for v in obj:
            _collect_subsections(v, into)


def evidence_from_vmdescription(json_bytes: bytes | str, name: str = "stream") -> Evidence:
    desc = parse_vmdescription(json_bytes)
    sections: dict[str, set[str]] = {}
    for dev in desc.devices:
        vmsd = dev.get("vmsd_name")
        if not isinstance(vmsd, str):
            continue
        _collect_subsections(dev, sections.setdefault(vmsd, set()))
    return Evidence(name, sections)


def evidence_from_stream(path: str) -> Evidence:
    """Evidence from a plain (uncompressed) stream file's VMDESCRIPTION trailer."""
    from conformance.check.inputs import read_vmdescription

    raw = read_vmdescription(path)
    if raw is None:
        raise ValueError(f"{path}: no VMDESCRIPTION trailer found (a plain stream file written by QEMU is needed)")
    return evidence_from_vmdescription(raw, path)


@dataclass
class Judged:
    """A source's real stream judged by `check`'s own judge as the other side's destination
    would load it: a destination of that side's QEMU version and machine type (its dump's),
    with check's defaults (the version's built-in tables, device layouts and value rules)."""

    stream: str
    version: str
    machine: str | None
    verdict: str  # conforms | violations
    rejected: bool
    violations: list[dict]

    def as_json(self) -> dict:
        return {"stream": self.stream, "destination": {"version": self.version, "machine": self.machine},
                "verdict": self.verdict, "rejected": self.rejected, "violations": self.violations}

    def format(self, direction: str) -> list[str]:
        dst = f"QEMU {self.version}" + (f", {self.machine}" if self.machine else "")
        lines = [f"judged for {direction}: {self.stream} as `check` judges it for that destination ({dst}): "
                 f"{self.verdict.upper()}"]
        for v in self.violations:
            where = f"{v['channel']} @ {v['offset']}" + (f" [{v['section']}]" if v.get("section") else "")
            lines.append(f"  {v['severity']:<11} {v['code']:<28} {where}: {v['message']}")
        return lines


def judge_stream(diff: VmstateDiff, direction: str, stream: str, dest_dump: DumpVmstate, version: str | None) -> Judged:
    """`stream`, a real stream of `direction`'s source, judged as `migconform check STREAM
    --target VERSION --machine M` judges it (conformance.check.judge, with check's defaults):
    M is the machine type of the destination's dump `dest_dump`, VERSION its QEMU version
    (default: the newest modelled, as check's). The dump itself is what the differences are
    computed from; the judge adds what the dump cannot say (the version's device layouts,
    value rules, instance ids, RAM blocks). Kept in diff.judged[direction]."""
    from conformance.check.inputs import InputError
    from conformance.check.judge import judge_path
    from conformance.check.pipeline import StreamReadError
    from conformance.rules.profile import UnknownTarget, configure

    try:
        dest = configure(version, machine=dest_dump.machine)
        rep = judge_path(stream, dest)
    except (InputError, StreamReadError, UnknownTarget) as e:
        raise ValueError(str(e)) from None
    j = Judged(stream, dest.version, dest.machine, rep.verdict, rep.rejected, [v.as_json() for v in rep.violations])
    diff.judged[direction] = j
    return j


def apply_evidence(diff: VmstateDiff, direction: str, ev: Evidence) -> None:
    """Say, for `direction`, what the source's real stream `ev` sent: a "would break if sent"
    on a section or subsection it did send becomes "breaks"; one it did not send says so."""
    diff.evidence[direction] = ev.name
    for d in diff.differences:
        v = d.verdicts[direction]
        if v.verdict not in (BREAKS, WOULD_BREAK):
            continue
        sent_section = ev.sent(d.section)
        sent = ev.sent(d.section, d.subsection) if d.subsection else sent_section
        if v.verdict == WOULD_BREAK and v.condition in ("device", "subsection") and sent:
            v.verdict = BREAKS
            v.evidence = f"sent by {ev.name}"
        elif sent:
            v.evidence = f"section sent by {ev.name}" + ("; the outcome depends on run-time callbacks"
                                                         if v.condition == "exists" else "")
        elif sent_section and d.subsection:
            v.evidence = f"{ev.name} sent the section without this subsection"
        else:
            v.evidence = f"not sent by {ev.name}"


# ---------------------------------------------------------------- files and CLI

def load_dump(path: str) -> DumpVmstate:
    """A -dump-vmstate file (plain or compressed, '-' for stdin); ValueError with one line."""
    from wireformat.budgets import BUDGETS

    from conformance.check.inputs import InputError, open_stream, read_at_most

    try:
        src, name = open_stream(path)
        with src:  # within the JSON budget: /dev/zero or a bomb is not read without end
            data = read_at_most(src, BUDGETS.json_bytes + 1)
        if len(data) > BUDGETS.json_bytes:
            raise ValueError(f"{path}: more than {BUDGETS.json_bytes} bytes, not a -dump-vmstate JSON")
    except InputError as e:
        raise ValueError(str(e)) from None
    except OSError as e:
        raise ValueError(f"{path}: read error: {e}") from None
    try:
        dump = parse_dump_vmstate(data)
    except VmstateDecodeError as e:
        raise ValueError(f"{path}: not a -dump-vmstate JSON: {str(e).splitlines()[0]}") from None
    if not dump and dump.machine is None:
        raise ValueError(f"{path}: not a -dump-vmstate JSON: no vmschkmachine and no device")
    return dump


def add_vmstate_diff_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "vmstate-diff", help="compare two binaries' -dump-vmstate for one machine type "
        "(exit 0 no breaking difference, 1 breaking, 2 error)")
    p.add_argument("a", metavar="A.json", help="-dump-vmstate of binary A (plain or compressed, - for stdin)")
    p.add_argument("b", metavar="B.json", help="-dump-vmstate of binary B, same machine type")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.add_argument("--direction", choices=("a-to-b", "b-to-a", "both"), default="both",
                   help="which migration direction decides the exit code and the listing (default both)")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 also for differences that would break only if something conditional is sent")
    p.add_argument("--all", action="store_true", help="list the differences that break neither direction too")
    p.add_argument("--ignore", action="append", default=[], metavar="VMSD",
                   help="leave out differences of this section (vmsd name as listed; repeatable), e.g. one "
                   "known and accepted")
    p.add_argument("--stream-a", metavar="STREAM", help="a stream A saved (plain file): what A really sends; also "
                   "judged as `check STREAM --target B-VERSION --machine B's` judges it (A->B: a stream that destination "
                   "rejects is breaking)")
    p.add_argument("--stream-b", metavar="STREAM", help="a stream B saved (plain file): what B really sends; also "
                   "judged as A's destination loads it (B->A)")
    p.add_argument("--a-version", choices=VERSIONS, default=None, metavar="VERSION",
                   help=f"A's QEMU version, for judging --stream-b as A's destination (default {NEWEST})")
    p.add_argument("--b-version", choices=VERSIONS, default=None, metavar="VERSION",
                   help=f"B's QEMU version, for judging --stream-a as B's destination (default {NEWEST})")
    p.set_defaults(func=cmd_vmstate_diff)


def cmd_vmstate_diff(args) -> int:
    try:
        a, b = load_dump(args.a), load_dump(args.b)
        diff = diff_dumps(a, b, a_name=args.a, b_name=args.b)
        ignore = set(getattr(args, "ignore", None) or ())
        if ignore:
            diff.ignored = [d for d in diff.differences if d.section in ignore]
            diff.differences = [d for d in diff.differences if d.section not in ignore]
        if getattr(args, "stream_a", None):
            apply_evidence(diff, A_TO_B, evidence_from_stream(args.stream_a))
            judge_stream(diff, A_TO_B, args.stream_a, b, getattr(args, "b_version", None))
        if getattr(args, "stream_b", None):
            apply_evidence(diff, B_TO_A, evidence_from_stream(args.stream_b))
            judge_stream(diff, B_TO_A, args.stream_b, a, getattr(args, "a_version", None))
    except (ValueError, VmstateDecodeError) as e:
        print(f"migconform: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return EXIT_ERROR
    direction = {"a-to-b": A_TO_B, "b-to-a": B_TO_A}.get(getattr(args, "direction", "both"))
    strict = bool(getattr(args, "strict", False))
    if args.json:
        print(json.dumps(diff.as_json(direction, strict), indent=2))
    else:
        print(diff.format(show_compatible=bool(getattr(args, "all", False)), direction=direction))
    return diff.exit_code(direction, strict=strict)


def main(argv: list[str] | None = None) -> int:
    """`python -m conformance.tools.vmstate_diff A.json B.json` (also `migconform vmstate-diff`)."""
    import argparse

    parser = argparse.ArgumentParser(prog="migconform")
    sub = parser.add_subparsers(dest="command", required=True)
    add_vmstate_diff_parser(sub)
    args = parser.parse_args(["vmstate-diff", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
