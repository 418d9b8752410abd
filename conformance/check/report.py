"""A Report as text, for people (`--json` is Report.as_json)."""

from __future__ import annotations

from conformance.check.pipeline import Report


def format_report(rep: Report) -> str:
    s = rep.stats
    conf = s.get("configuration") or {}
    lines = []
    head = f"{rep.source}: {rep.verdict.upper()} as a QEMU {rep.target} destination"
    lines.append(head)
    pages = sum(b.get("page", 0) for b in s.get("ram_blocks", {}).values())
    zeros = sum(b.get("zero", 0) for b in s.get("ram_blocks", {}).values())
    lines.append(f"  {s.get('bytes', 0)} bytes, machine {conf.get('machine_type', '?')}, {s.get('sections', 0)} sections, "
                 f"{pages} pages + {zeros} zero pages, {rep.seconds:.2f} s")
    if rep.violations:
        lines.append("")
        for v in rep.violations:
            lines.append("  " + v.one_line())
        if s.get("violations_dropped"):
            lines.append(f"  … {s['violations_dropped']} more violations not listed")
    return "\n".join(lines)
