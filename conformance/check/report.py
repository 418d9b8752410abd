"""A Report as text, for people (`--json` is Report.as_json)."""

from __future__ import annotations

from wireformat.constants import TARGET_PAGE_SIZE as PAGE

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
    blocks = s.get("ram_blocks", {}).values()
    total = sum((b.get("used_length") or 0) // PAGE for b in blocks)
    if (s.get("status") == "completed" and "multifd" not in s and s.get("mapped_ram_pages") is None
            and "x-ignore-shared" not in (conf.get("capabilities") or ()) and pages + zeros < total):
        # every page is sent at least once in a completed precopy: the rest went another way
        lines.append(f"  note: {total - pages - zeros} of {total} RAM pages are not in this stream: a multifd "
                     "migration sends them on its channels (check them too: --channel FILE, or the capture directory)")
    if rep.violations:
        lines.append("")
        # the same violation said again (same code and message, elsewhere) is said once, with a count
        seen: dict[tuple, list] = {}
        for v in rep.violations:
            seen.setdefault((v.code, v.message), []).append(v)
        for group in seen.values():
            more = f"  (and {len(group) - 1} more times, last @ {group[-1].offset})" if len(group) > 1 else ""
            lines.append("  " + group[0].one_line() + more)
        if s.get("violations_dropped"):
            lines.append(f"  … {s['violations_dropped']} more violations not listed")
    return "\n".join(lines)
