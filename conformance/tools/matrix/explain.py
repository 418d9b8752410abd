"""Why a cell went as it did: the place a destination failed, read from its error lines
(QEMU's texts of migration/savevm.c and migration/ram.c), found in the source's stream and
in the destination's own stream of the same guest, with the checker's violations there, the
section's decoded fields and what the destination's -dump-vmstate knows of it."""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from conformance.check.dump import dump_stream
from conformance.check.inputs import read_vmdescription
from conformance.check.pipeline import trailer_body_sizer
from conformance.qemu import QemuBinary, QemuError, dump_vmstate
from conformance.rules import compat
from conformance.rules.catalogue import Severity
from conformance.tools.matrix.grid import newest_machine, safe_name

if TYPE_CHECKING:
    from conformance.tools.matrix.cell import CellResult
    from conformance.tools.matrix.store import Capture, CaptureStore

_DEVICE_PATTERNS = (
    # (regex, kind); QEMU's texts (migration/savevm.c, migration/ram.c) of 7.2 and 10.0
    (re.compile(r'Unknown ramblock "([^"]+)", cannot accept migration'), "ramblock"),
    (re.compile(r"Length mismatch: (\S+): 0x([0-9a-fA-F]+) in != 0x([0-9a-fA-F]+)"), "ramblock-length"),
    (re.compile(r"error while loading state for instance 0x([0-9a-fA-F]+) of device '([^']+)'"), "load"),
    (re.compile(r"Unknown savevm section or instance '([^']+)' (-?\d+)"), "unknown"),
    (re.compile(r"savevm: unsupported version (\d+) for '([^']+)' v(\d+)"), "version"),
    (re.compile(r"Missing section footer for (\S+)"), "footer"),
    (re.compile(r"error while loading state section id (\d+)\(([^)]+)\)"), "section"),
)
# the more specific statement wins: a RAM block over the ram section that failed because of
# it, a device's own error over the generic section line
_RANK = {"ramblock": 0, "ramblock-length": 0, "unknown": 1, "version": 1, "footer": 1, "load": 2, "section": 3}


def failing_section(lines: Iterable[str]) -> dict | None:
    """The place a destination's error lines name: {"kind", "idstr", "instance_id", ...};
    for a RAM block ("ramblock", "ramblock-length") idstr is "ram" and "block" names it."""
    found = None
    for line in lines:
        for rx, kind in _DEVICE_PATTERNS:
            m = rx.search(line)
            if not m:
                continue
            if kind == "ramblock":
                d = {"kind": kind, "idstr": "ram", "instance_id": 0, "block": m[1]}
            elif kind == "ramblock-length":
                d = {"kind": kind, "idstr": "ram", "instance_id": 0, "block": m[1], "stream_length": int(m[2], 16),
                     "local_length": int(m[3], 16)}
            elif kind == "load":
                d = {"kind": kind, "idstr": m[2], "instance_id": int(m[1], 16)}
            elif kind == "unknown":
                d = {"kind": kind, "idstr": m[1], "instance_id": int(m[2])}
            elif kind == "version":
                d = {"kind": kind, "idstr": m[2], "instance_id": None, "stream_version": int(m[1]),
                     "local_version": int(m[3])}
            elif kind == "footer":
                d = {"kind": kind, "idstr": m[1], "instance_id": None}
            else:
                d = {"kind": kind, "idstr": m[2], "instance_id": None, "section_id": int(m[1])}
            if found is None or _RANK[kind] < _RANK[found["kind"]]:
                found = d
            break
    return found


def _dump(store: CaptureStore, path: Path) -> dict:
    """The stream at `path` decoded field by field (once per store)."""
    def decode() -> dict:
        with open(path, "rb") as f:
            return dump_stream(f, name=path.name, body_sizer=trailer_body_sizer(path), fields=True)

    return store.dumps.get(str(path), decode)


def _dst_vmstate(store: CaptureStore, binary: QemuBinary, machine: str):
    """The destination's -dump-vmstate for `machine` (parsed, once per store), or None."""
    from wireformat import vmstate

    def read() -> Any:
        try:
            # one file per process and thread: xdist workers and threads may race for the same table
            name = (f"vmstate-{safe_name(binary.full_version)}-{safe_name(machine)}-{os.getpid()}-"
                    f"{threading.get_ident()}.json")
            out = dump_vmstate(binary, machine, store.root / name)
            table = vmstate.parse_dump_vmstate(out.read_text())
            out.unlink(missing_ok=True)
        except (QemuError, OSError, ValueError):
            table = None
        return table

    return store.vmstates.get((str(binary.path), machine), read)


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _match_sections(sections: list[dict], idstr: str, instance: int | None) -> list[dict]:
    out = [s for s in sections if s["idstr"] == idstr and (instance is None or s["instance_id"] == instance)]
    return out or [s for s in sections if s["idstr"] == idstr]


def _describe_section(s: dict) -> str:
    dec = s.get("decoded")
    return (f"section {s['section_id']} '{s['idstr']}' instance {s['instance_id']} version {s['version_id']} "
            f"at byte {s['offset']} ({s['bytes']} bytes" + (f", decoded: {dec}" if dec else "") + ")")


def explain_cell(res: CellResult, store: CaptureStore, cap: Capture) -> dict:
    """Why the cell went as it did, from the stream at the failing place. Empty for a pass."""
    spec, real = res.spec, res.real
    details: list[str] = []
    out: dict = {"summary": "", "details": details}
    if res.verdict == "pass":
        return {}
    pred: list[str] = []  # what the wrong prediction said, after the evidence
    if res.model_agrees is False:
        if res.model.compatible:
            pred.append(f"model: predicted compatible (warnings: {len(res.model.warnings)})")
        else:
            pred += [f"model: predicted failure: {r}" for r in res.model.reasons]
    if res.checker_agrees is False:
        rejects = [v for v in res.checker.violations if v["severity"] == Severity.REJECT.value]
        if res.checker.ok:
            pred.append(f"checker (target {spec.dst}): {res.checker.note}; no violation a destination rejects")
        for v in rejects[:5]:
            pred.append(f"checker (target {spec.dst}): {v['code']} at byte {v['offset']}"
                        + (f" [{v['section']}]" if v.get("section") else "") + f": {v['message']}")

    if real.kind == "unsupported-machine":
        side_ver = spec.src if real.side == "source" else spec.dst
        vd = compat.load(side_ver)
        fam = "pc-q35" if spec.machine.startswith("pc-q35") else "pc-i440fx"
        out["summary"] = (f"QEMU {side_ver} ({real.side}) has no machine type {spec.machine} "
                          f"(its newest {fam} is {newest_machine(vd.version, fam)}): {real.message}")
    elif real.kind == "refused":
        out["summary"] = f"the {real.side} (QEMU {spec.src if real.side == 'source' else spec.dst}) refused the set-up: {real.message}"
    elif real.kind == "error":
        out["summary"] = f"harness error on the {real.side}: {real.message}"
    elif real.kind == "no-boot":
        out["summary"] = (f"the cell could not start: on the {real.side} (QEMU {spec.src}, accel {spec.accel}) "
                          f"{real.message}; no migration was tried")
    elif real.kind == "completed":
        out["summary"] = (f"QEMU {spec.dst} loaded the stream of QEMU {spec.src} ({spec.machine}, {spec.devices}, "
                          f"capabilities {spec.caps}), but the " + " and the ".join(res.disagreeing)
                          + " predicted a failure")
    elif real.kind in ("ram-differs", "guest-dead"):
        out["summary"] = f"QEMU {spec.dst} completed the load of QEMU {spec.src}'s stream, but {real.message}"
    elif real.side == "source" or cap.path is None:
        out["summary"] = f"the source (QEMU {spec.src}) {real.said}"
    else:
        _explain_load_failure(res, store, cap, out)
    details += pred
    if res.verdict == "disagree" and cap.path is not None:
        details.append(_stream_facts(store, cap.path))
    if res.model.warnings and res.verdict == "disagree":
        details += [f"model warning: {w}" for w in res.model.warnings[:5]]
    return out


def _stream_facts(store: CaptureStore, path: Path) -> str:
    """What a stream says about itself, for a reader who wonders why a model got it wrong."""
    d = _dump(store, path)
    conf = d.get("configuration")
    parts = [f"stream: {d.get('bytes', 0)} bytes, {len(d.get('sections', []))} sections"]
    if conf:
        caps = ", ".join(conf.get("capabilities") or []) or "none"
        parts.append(f"configuration record: machine {conf.get('machine_type')}, validated capabilities {caps}")
    else:
        parts.append("no configuration record (machine types <= 2.3 send none): the stream names no machine "
                     "type and no capability")
    if d.get("vmdescription"):
        parts.append(f"VMDESCRIPTION: {d['vmdescription'].get('devices')} devices")
    elif read_vmdescription(str(path)) is not None:
        parts.append("VMDESCRIPTION: present at the end of the file (decoding stopped before it)")
    else:
        parts.append("VMDESCRIPTION: absent (device bodies can only be framed by footers)")
    if d.get("error"):
        parts.append(f"decoding stopped: {d['error']}")
    return "; ".join(parts)


def _explain_load_failure(res: CellResult, store: CaptureStore, cap: Capture, out: dict) -> None:
    spec, real = res.spec, res.real
    details: list[str] = out["details"]
    where = failing_section(real.error_lines)
    verb = "hung" if real.kind == "hung" else "failed"
    if where is not None:
        details.append(f"destination said: {real.message}")
    if where is None:
        out["summary"] = f"QEMU {spec.dst} destination {verb}: {real.message}"
        rejects = [v for v in res.checker.violations if v["severity"] == Severity.REJECT.value]
        for v in rejects[:5]:
            details.append(f"stream: {v['code']} at byte {v['offset']}: {v['message']}")
        details += [f"destination said: {ln}" for ln in real.errors[:6]]
        return
    assert cap.path is not None
    src_dump = _dump(store, cap.path)
    secs = _match_sections(src_dump["sections"], where["idstr"], where.get("instance_id"))
    ref = store.get(spec.reference_key)
    ref_secs = _match_sections(_dump(store, ref.path)["sections"], where["idstr"], where.get("instance_id")) if ref.path else []
    sec = secs[0] if secs else None
    out["section"] = ({k: sec[k] for k in ("section_id", "idstr", "instance_id", "version_id", "offset", "bytes")}
                      if sec else {"idstr": where["idstr"], "instance_id": where.get("instance_id")})
    lacks = ""
    if where["kind"].startswith("ramblock"):
        block = where["block"]
        src_blk = src_dump["ram"]["blocks"].get(block)
        ref_blk = _dump(store, ref.path)["ram"]["blocks"].get(block) if ref.path else None
        if where["kind"] == "ramblock":
            lacks = f"the destination (QEMU {spec.dst}) has no RAM block '{block}' for this guest"
        else:
            lacks = (f"RAM block '{block}' is {where['stream_length']:#x} bytes in the stream, "
                     f"{where['local_length']:#x} on the destination (QEMU {spec.dst})")
        if src_blk is not None:
            details.append(f"source stream (QEMU {spec.src}): MEM_SIZE lists RAM block '{block}', used_length "
                           f"{src_blk.get('used_length', 0):#x}, {src_blk.get('page', 0)} pages sent")
        if ref.path is not None:
            details.append(f"destination's own stream (QEMU {spec.dst}, same guest): " +
                           (f"RAM block '{block}' used_length {ref_blk.get('used_length', 0):#x}" if ref_blk
                            else f"no RAM block '{block}'"))
    elif where["kind"] == "unknown" or (sec is not None and ref.path is not None and not ref_secs):
        lacks = f"the destination (QEMU {spec.dst}) has no section '{where['idstr']}' for this guest"
    elif where["kind"] == "version":
        lacks = (f"the stream has version {where['stream_version']}, the destination (QEMU {spec.dst}) "
                 f"knows up to v{where['local_version']}")
    elif sec is not None and ref_secs and ref_secs[0]["version_id"] != sec["version_id"]:
        lacks = (f"version {sec['version_id']} in the stream, {ref_secs[0]['version_id']} in the destination's own "
                 f"stream of this guest")
    if where["kind"].startswith("ramblock"):
        head = f"QEMU {spec.dst} destination {verb} at RAM block '{where['block']}'"
        if sec is not None:
            head += f" (MEM_SIZE record of the ram section {sec['section_id']}, byte {sec['offset']})"
    else:
        head = f"QEMU {spec.dst} destination {verb} at '{where['idstr']}'"
        if sec is not None:
            head += f" (section {sec['section_id']}, version {sec['version_id']}, byte {sec['offset']})"
    out["summary"] = head + (f": {lacks}" if lacks else f": {real.message}")
    if sec is not None:
        details.append(f"source stream (QEMU {spec.src}): {_describe_section(sec)}")
    else:
        details.append(f"source stream (QEMU {spec.src}): no section '{where['idstr']}'")
    if ref.path is not None:
        if ref_secs:
            details.append(f"destination's own stream (QEMU {spec.dst}, same guest): {_describe_section(ref_secs[0])}")
        else:
            details.append(f"destination's own stream (QEMU {spec.dst}, same guest): no section '{where['idstr']}'")
    if where["kind"].startswith("ramblock"):  # RAM blocks have no vmsd
        details += [f"destination said: {ln}" for ln in real.errors[1:5]]
        return
    dst_table = _dst_vmstate(store, store.binaries[spec.dst], spec.machine)
    if dst_table is not None:
        info = dst_table.lookup_idstr(where["idstr"])
        if info is not None:
            details.append(f"destination's -dump-vmstate: vmsd '{info.name}' versions {info.minimum_version_id}.."
                           f"{info.version_id}, subsections {', '.join(info.subsections) or 'none'}")
            if sec is not None and not info.accepts_version(sec["version_id"]):
                details.append(f"the destination does not accept version {sec['version_id']} of '{info.name}'")
    # fields the two ends put in the section: a subsection or field only one side has
    if sec is not None and "fields" in sec:
        src_f = sec["fields"]
        if ref_secs and "fields" in ref_secs[0]:
            dst_f = ref_secs[0]["fields"]
            only_src = [k for k in src_f if k not in dst_f]
            only_dst = [k for k in dst_f if k not in src_f]
            if only_src:
                details.append(f"only in the source's section: {', '.join(only_src)}")
            if only_dst:
                details.append(f"only in the destination's own section: {', '.join(only_dst)}")
            differ = [k for k in src_f if k in dst_f and src_f[k] != dst_f[k]]
            for k in differ[:6]:
                details.append(f"field {k}: source {_short(src_f[k], 60)}, destination's own {_short(dst_f[k], 60)}")
        for k, v in list(src_f.items())[:8]:
            details.append(f"  {k} = {_short(v)}")
    elif sec is not None and sec.get("decoded"):
        details.append(f"fields: {sec['decoded']}")
    near = [v for v in res.checker.violations
            if where["idstr"] in (v.get("section") or "") or (sec is not None and v["offset"] >= sec["offset"]
                                                             and v["offset"] <= sec["offset"] + sec["bytes"] + 64)]
    for v in near[:5]:
        details.append(f"checker: {v['severity']} {v['code']} at byte {v['offset']}: {v['message']}")
    if not near and res.checker.ok is not None:
        details.append(f"checker (target {spec.dst}): nothing reported at this section ({res.checker.note})")
    for ln in real.errors[1:5]:
        details.append(f"destination said: {ln}")
