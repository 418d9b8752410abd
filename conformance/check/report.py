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
        # a sentence QEMU adds to every message of one code (its advice after "Unknown savevm
        # section or instance 'X' N.") is said once, after the last of them
        tails = _shared_tails(seen)
        last: dict[str, int] = {}
        for (code, message), group in seen.items():
            more = f"  (and {len(group) - 1} more times, last @ {group[-1].offset})" if len(group) > 1 else ""
            text = group[0].one_line()
            tail = tails.get(code)
            if tail and message.endswith(tail):
                text = text[: -len(tail)].rstrip(" .:")
                last[code] = len(lines)
            lines.append("  " + text + more)
        for code, at in sorted(last.items(), key=lambda kv: -kv[1]):
            n = sum(len(g) for (c, m), g in seen.items() if c == code and m.endswith(tails[code]))
            lines.insert(at + 1, f"{'':>14}(QEMU adds to each of these {n}: {tails[code].strip()})")
        if s.get("violations_dropped"):
            lines.append(f"  … {s['violations_dropped']} more violations not listed")
    return "\n".join(lines)


def _shared_tails(seen: dict[tuple, list]) -> dict[str, str]:
    """code -> the sentence that every one of its distinct messages ends with (QEMU's hint
    after "Unknown savevm section or instance 'X' N."), when there are several and it is long."""
    import os

    out = {}
    by_code: dict[str, list[str]] = {}
    for code, message in seen:
        by_code.setdefault(code, []).append(message)
    for code, messages in by_code.items():
        if len(messages) < 2:
            continue
        tail = os.path.commonprefix([m[::-1] for m in messages])[::-1]
        cut = tail.find(". ")  # from a sentence's start
        tail = tail[cut + 1:] if cut >= 0 else ""
        if len(tail.strip()) >= 40:
            out[code] = tail
    return out
