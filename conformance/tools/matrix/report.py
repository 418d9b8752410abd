"""Reports of `migconform matrix`: a terminal grid, a progress bar, and a self-contained HTML
page. Everything renders from the JSON form of the results (`MatrixResult.as_json()`), so a
saved `--json` file can be rendered again."""

from __future__ import annotations

import html
import re
import threading
from collections import Counter
from typing import Any, Mapping, TextIO

_TEXT_MARK = {"pass": "pass", "expected-fail": "xfail", "disagree": "DIFF", "error": "ERR"}
_ANSI = {"pass": "32", "expected-fail": "36", "disagree": "1;31", "error": "1;33"}


def _as_data(result: Any) -> Mapping:
    return result.as_json() if hasattr(result, "as_json") else result


def _arrow(direction: str) -> str:
    return direction.replace("->", "→")


def _index(data: Mapping) -> dict[tuple[str, str, str, str], dict]:
    return {(c["caps"], c["machine"], _row(c), f"{c['src']}->{c['dst']}"): c for c in data["cells"]}


def _row(c: Mapping) -> str:
    """A cell's row: its device set, and its guest and one-sided settings when not the defaults."""
    return c.get("row", c["devices"])


def _rows(grid: Mapping) -> list[str]:
    return list(grid.get("rows", grid["devices"]))


def short_real(cell: Mapping) -> str:
    """A few words for what really happened."""
    r = cell["real"]
    kind = r["kind"]
    if kind == "completed":
        return "completed"
    if kind == "unsupported-machine":
        return f"no machine ({'src' if r['side'] == 'source' else 'dst'})"
    if kind == "refused":
        return f"refused ({'src' if r['side'] == 'source' else 'dst'})"
    return {"failed": "failed", "hung": "hung", "error": "error", "no-boot": "guest did not boot",
            "ram-differs": "RAM differs",
            "guest-dead": "guest dead"}.get(kind, kind)


def predicted(cell: Mapping) -> str:
    mc = cell["model"]["compatible"]
    m = "not modelled" if mc is None else ("compatible" if mc else "incompatible")
    ok = cell["checker"]["ok"]
    c = "n/a" if ok is None else ("accepts" if ok else "rejects")
    return f"model: {m}; checker: {c}"


def cell_text(cell: Mapping) -> str:
    """Plain-text account of one cell (tooltips, findings)."""
    r = cell["real"]
    lines = [f"{cell['id']}  [{cell['verdict']}]",
             f"real: {r['kind']} on the {r['side']}" + (f": {r['message']}" if r["message"] and r["kind"] != "completed" else ""),
             predicted(cell)]
    if cell["disagreeing"]:
        lines.append("disagrees: " + ", ".join(cell["disagreeing"]))
    for reason in cell["model"]["reasons"][:3]:
        lines.append(f"model reason: {reason}")
    ex = cell.get("explanation") or {}
    if ex.get("summary"):
        lines.append(f"why: {ex['summary']}")
    lines += [f"  {d}" for d in ex.get("details", [])]
    return "\n".join(lines)


def _finding_key(cell: Mapping) -> tuple:
    """Cells that disagree the same way: direction, who was wrong, what really happened,
    and the first thing the wrong prediction said (violation code and section name, or the
    model's first reason with the machine type blanked)."""
    ck = cell["checker"]
    first = next((v for v in ck["violations"] if v["severity"] == "reject"), None)
    said = ""
    if "checker" in cell["disagreeing"]:
        said = (f"{first['code']} [{re.sub(r' [(]id [0-9]+[)]$', '', first.get('section') or '')}]" if first
                else "accepts")
    model = ""
    if "model" in cell["disagreeing"]:
        model = re.sub(r"pc-(i440fx|q35)-[0-9.]+", "M", cell["model"]["reasons"][0]) if cell["model"]["reasons"] \
            else "compatible"
    r = cell["real"]
    return (cell["verdict"], f"{cell['src']}->{cell['dst']}", tuple(cell["disagreeing"]), r["kind"], r["side"],
            said, model)


def group_findings(cells: list[Mapping]) -> list[list[Mapping]]:
    """Disagreeing and error cells, grouped by _finding_key, biggest group first."""
    groups: dict[tuple, list[Mapping]] = {}
    for c in cells:
        if c["verdict"] in ("disagree", "error"):
            groups.setdefault(_finding_key(c), []).append(c)
    return sorted(groups.values(), key=lambda g: (-len(g), g[0]["id"]))


def finding_title(group: list[Mapping]) -> str:
    c = group[0]
    who = " and ".join(c["disagreeing"]) or "harness"
    what = short_real(c)
    n = len(group)
    head = f"{n} cell{'s' if n != 1 else ''} {_arrow(c['src'] + '->' + c['dst'])}: real {what}, {predicted(c)}"
    key = _finding_key(c)
    if key[5] and key[5] != "accepts":
        head += f" ({key[5]})"
    return head + (f" — the {who} {'is' if who in ('model', 'checker') else 'are'} wrong" if c["disagreeing"] else "")


def _cell_short_id(c: Mapping) -> str:
    return f"{c['machine']}/{_row(c)}/{c['caps']}"


# ---------------------------------------------------------------- progress

class ProgressBar:
    """Cells done, disagreements, time left on stderr (conformance.progress: rich's bar on a
    terminal, a plain line every few seconds in a log). Thread-safe; update(cell, done, total)."""

    def __init__(self, total: int, *, enabled: bool = True, stream: TextIO | None = None, every: float = 5.0):
        from conformance.progress import Progress

        self.total, self.enabled = total, enabled
        self.counts: Counter = Counter()
        self._lock = threading.Lock()
        self._bar = Progress("matrix", total, unit=" cells", stream=stream, enabled=enabled, every=every)

    def update(self, cell: Any, done: int, total: int | None = None) -> None:
        verdict = getattr(cell, "verdict", None) or (cell.get("verdict") if isinstance(cell, Mapping) else None)
        with self._lock:
            if verdict:
                self.counts[verdict] += 1
            self._done = done
            self._show(total)

    def doing(self, what: str) -> None:
        """What a worker is at now (a capture booting its guest, a load): shown beside the count,
        so that a long step is not silence."""
        with self._lock:
            self._doing = what
            self._show()

    def tick(self) -> None:
        """Called every few seconds while cells run: a log line even when no cell ended."""
        with self._lock:
            self._show()

    _done = 0
    _doing = ""

    def _show(self, total: int | None = None) -> None:
        errors = self.counts["error"]
        self._bar.update(self._done, total or self.total,
                         f"{self.counts['disagree']} disagree" + (f", {errors} error" if errors else "")
                         + (f"  {self._doing}" if self._doing else ""))

    def close(self) -> None:
        self._bar.close()


# ---------------------------------------------------------------- terminal

def format_text(result: Any, *, color: bool = False) -> str:
    data = _as_data(result)
    grid = data["grid"]
    idx = _index(data)
    dirs = grid["directions"]
    mw = max([len("machine")] + [len(m) for m in grid["machines"]])
    dw = max([len("devices")] + [len(d) for d in _rows(grid)])
    cw = max([len(_arrow(d)) for d in dirs] + [5]) + 2

    def paint(verdict: str, text: str) -> str:
        return f"\x1b[{_ANSI[verdict]}m{text}\x1b[0m" if color else text

    versions = ", ".join(f"{v} ({full})" for v, full in data["versions"].items())
    out = [f"migconform matrix: QEMU {versions}",
           "cells: pass = completed as predicted, xfail = failed as predicted, DIFF = a prediction was wrong, "
           "ERR = no verdict", ""]
    for caps in grid["capabilities"]:
        names = grid["capabilities"][caps]
        out.append(f"capabilities: {caps}" + (f" ({', '.join(names)})" if names and names != [caps] else ""))
        out.append(f"  {'machine':<{mw}}  {'devices':<{dw}}" + "".join(f"{_arrow(d):>{cw}}" for d in dirs))
        for m in grid["machines"]:
            for dev in _rows(grid):
                row = f"  {m:<{mw}}  {dev:<{dw}}"
                for d in dirs:
                    c = idx.get((caps, m, dev, d))
                    if c is None:
                        row += f"{'-':>{cw}}"
                    else:
                        mark = _TEXT_MARK[c["verdict"]]
                        row += " " * (cw - len(mark)) + paint(c["verdict"], mark)
                out.append(row)
        out.append("")
    groups = group_findings(data["cells"])
    if groups:
        n = sum(len(g) for g in groups)
        out.append(f"findings: {n} cell{'s' if n != 1 else ''} in {len(groups)} group{'s' if len(groups) != 1 else ''}")
        for g in groups:
            out.append("")
            out.append("* " + finding_title(g))
            out.append("  cells: " + ", ".join(_cell_short_id(c) for c in g))
            out += ["  " + ln for ln in cell_text(g[0]).splitlines()]
        out.append("")
    xf = Counter((c.get("explanation") or {}).get("summary") or short_real(c)
                 for c in data["cells"] if c["verdict"] == "expected-fail")
    if xf:
        out.append("expected failures (real and predicted agree, or a labelled known fault of the binary):")
        for why, n in xf.most_common():
            out.append(f"  {n:>4} x {why}")
        out.append("")
    labelled = [c for c in data["cells"] if c.get("known_fault")]
    if labelled:
        seen = sum(1 for c in labelled if c.get("known_fault_seen"))
        out.append(f"caveat: {len(labelled)} cell{'s' if len(labelled) != 1 else ''} can meet a "
                   f"{labelled[0]['known_fault']}; it showed in {seen}")
        out.append("")
    s = data["summary"]
    out.append(f"{s['cells']} cells: {s['pass']} pass, {s['expected-fail']} expected-fail, {s['disagree']} disagree, "
               f"{s['error']} error in {s['seconds']:.1f} s")
    return "\n".join(out)


# ---------------------------------------------------------------- HTML

_CSS = """
:root { --pass:#c8e6c9; --pass-b:#2e7d32; --xfail:#d7e3f4; --xfail-b:#3f6aa1; --diff:#f8b4b4; --diff-b:#b71c1c;
        --err:#ffe0a3; --err-b:#a15c00; }
* { box-sizing: border-box; }
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px; color: #1b1b1b; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
.meta { color: #555; margin-bottom: 12px; }
.chips span { display: inline-block; padding: 4px 10px; border-radius: 14px; margin-right: 8px; font-weight: 600;
              border: 1px solid; }
.legend { margin: 10px 0 0; color: #444; font-size: 13px; }
.legend i { display: inline-block; width: 14px; height: 14px; vertical-align: -2px; border-radius: 3px;
            margin: 0 4px 0 12px; border: 1px solid #999; }
table { border-collapse: collapse; margin-top: 4px; table-layout: fixed; }
col.m { width: 150px; } col.d { width: 290px; } col.dir { width: 160px; }
.findings .cells { font-size: 12px; margin-top: 2px; } .findings .cells a { color: #333; }
th, td { border: 1px solid #c9c9c9; padding: 0; }
th { background: #f3f3f3; padding: 6px 10px; text-align: left; font-weight: 600; white-space: nowrap; }
th.dir { text-align: center; }
td.m, td.d { overflow: hidden; text-overflow: ellipsis; }
td.c:target { outline: 3px solid #222; outline-offset: -3px; }
td.m, td.d { padding: 4px 10px; white-space: nowrap; font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 13px; }
td.m { background: #fafafa; font-weight: 600; vertical-align: top; }
td.c { text-align: center; position: relative; }
td.pass { background: var(--pass); } td.expected-fail { background: var(--xfail); }
td.disagree { background: var(--diff); } td.error { background: var(--err); }
td.c details > summary { list-style: none; cursor: pointer; padding: 4px 8px; font-size: 13px; white-space: nowrap; }
td.c details > summary::-webkit-details-marker { display: none; }
td.disagree details > summary { font-weight: 700; color: var(--diff-b); }
td.error details > summary { font-weight: 700; color: var(--err-b); }
td.pass details > summary { color: var(--pass-b); } td.expected-fail details > summary { color: var(--xfail-b); }
.pop { position: absolute; z-index: 10; left: 50%; transform: translateX(-50%); top: 100%; width: 560px;
       text-align: left; background: #fff; border: 1px solid #888; box-shadow: 0 4px 16px rgba(0,0,0,.25);
       padding: 10px 12px; font-size: 12.5px; }
.pop dt { font-weight: 600; margin-top: 4px; } .pop dd { margin: 0 0 2px 12px; word-break: break-word; }
.pop ul { margin: 2px 0 0 0; padding-left: 18px; } .pop code { font-size: 12px; }
.findings { border-left: 4px solid var(--diff-b); background: #fff5f5; padding: 8px 14px; margin: 12px 0; }
.findings.ok { border-color: var(--pass-b); background: #f3fbf3; }
.findings li { margin: 6px 0; } .findings code { font-size: 12.5px; }
.xf { color: #333; } .xf li { margin: 2px 0; }
.mono { font-family: ui-monospace, "DejaVu Sans Mono", monospace; }
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _anchor(cell: Mapping) -> str:
    return "cell-" + re.sub(r"[^A-Za-z0-9.+-]+", "_", cell["id"])


def _label(cell: Mapping) -> str:
    v = cell["verdict"]
    if v == "pass":
        return "✓ ok"
    if v == "expected-fail":
        return "✗ " + short_real(cell)
    if v == "error":
        return "! error"
    return "≠ " + short_real(cell)


def _popup(cell: Mapping) -> str:
    r = cell["real"]
    parts = [f"<dl><dt>{_e(cell['id'])}</dt>",
             f"<dd>QEMU {_e(cell['src_version'] or cell['src'])} → {_e(cell['dst_version'] or cell['dst'])}; "
             f"capabilities: {_e(', '.join(cell['capabilities']) or 'none')}</dd>",
             f"<dt>real outcome</dt><dd>{_e(r['kind'])} on the {_e(r['side'])}"
             + (f": <code>{_e(r['message'])}</code>" if r["kind"] != "completed" and r["message"] else "")
             + f" ({r['seconds']:.2f} s)</dd>",
             f"<dt>model (compat.predict)</dt><dd>{predicted(cell).split(';')[0].removeprefix('model: ')}"
             f"{' — <b>disagrees</b>' if cell['model']['agrees'] is False else ''}</dd>"]
    if cell["model"]["reasons"]:
        parts.append("<dd><ul>" + "".join(f"<li>{_e(x)}</li>" for x in cell["model"]["reasons"]) + "</ul></dd>")
    ck = cell["checker"]
    state = "n/a" if ck["ok"] is None else ("accepts" if ck["ok"] else "rejects")
    parts.append(f"<dt>checker (target {_e(cell['dst'])})</dt><dd>{state}: {_e(ck['note'])}"
                 f"{' — <b>disagrees</b>' if ck['agrees'] is False else ''}</dd>")
    if ck["violations"]:
        parts.append("<dd><ul>" + "".join(
            f"<li><code>{_e(v['severity'])} {_e(v['code'])}</code> @ {_e(v['offset'])}: {_e(v['message'])}</li>"
            for v in ck["violations"][:6]) + "</ul></dd>")
    ex = cell.get("explanation") or {}
    if ex.get("summary"):
        parts.append(f"<dt>why</dt><dd>{_e(ex['summary'])}</dd>")
        if ex.get("details"):
            parts.append("<dd><ul>" + "".join(f"<li class=mono>{_e(d)}</li>" for d in ex["details"]) + "</ul></dd>")
    if cell["model"]["warnings"]:
        parts.append(f"<dt>model warnings ({len(cell['model']['warnings'])})</dt><dd><ul>"
                     + "".join(f"<li>{_e(w)}</li>" for w in cell["model"]["warnings"][:4]) + "</ul></dd>")
    parts.append("</dl>")
    return "".join(parts)


def render_html(result: Any, *, title: str = "migconform matrix") -> str:
    """One self-contained page: summary, findings, then a table per capability set
    (rows: machine type x device set; columns: source → destination). Cells are coloured by
    whether the real outcome agrees with the predictions; hover shows the account, a click
    opens it."""
    data = _as_data(result)
    grid = data["grid"]
    idx = _index(data)
    s = data["summary"]
    versions = ", ".join(f"QEMU {_e(v)} ({_e(full)})" for v, full in data["versions"].items())
    settings = data.get("settings", {})
    out = ["<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
           f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
           f"<h1>{_e(title)}</h1>",
           f"<div class=meta>{versions} · {s['cells']} cells · {s['seconds']:.1f} s · "
           f"{_e(settings.get('mem_mb', '?'))} MiB guest (guests: {_e(', '.join(data['grid'].get('guests', ['paused'])))}; "
           f"accelerators: {_e(', '.join(data['grid'].get('accels', ['tcg'])))})"
           + (f" · -global {_e(' '.join(settings['globals']))}" if settings.get("globals") else "") + "</div>",
           "<div class=chips>"
           f"<span style='background:var(--pass);border-color:var(--pass-b)'>{s['pass']} pass</span>"
           f"<span style='background:var(--xfail);border-color:var(--xfail-b)'>{s['expected-fail']} expected fail</span>"
           f"<span style='background:var(--diff);border-color:var(--diff-b)'>{s['disagree']} disagree</span>"
           f"<span style='background:var(--err);border-color:var(--err-b)'>{s['error']} error</span></div>",
           "<div class=legend>Agree:<i style='background:var(--pass)'></i>completed, as predicted"
           "<i style='background:var(--xfail)'></i>failed, as predicted &nbsp; Disagree:"
           "<i style='background:var(--diff)'></i>the model or the checker was wrong"
           "<i style='background:var(--err)'></i>no verdict (harness error). "
           "Hover a cell for its account, click to pin it.</div>"]
    bad = [c for c in data["cells"] if c["verdict"] in ("disagree", "error")]
    if bad:
        heads = []
        if s["disagree"]:
            heads.append(f"{s['disagree']} disagreement{'s' if s['disagree'] != 1 else ''}")
        if s["error"]:
            heads.append(f"{s['error']} cell{'s' if s['error'] != 1 else ''} without a verdict")
        groups = group_findings(data["cells"])
        out.append(f"<div class=findings><b>{' and '.join(heads)}</b>, in {len(groups)} group"
                   f"{'s' if len(groups) != 1 else ''}<ul>")
        for g in groups:
            c = g[0]
            ex = c.get("explanation") or {}
            first = next((d for d in ex.get("details", []) if d.startswith(("checker", "model"))), "")
            out.append(f"<li><b>{_e(finding_title(g))}</b><br>{_e(ex.get('summary') or c['real']['message'])}"
                       + (f"<br><span class=mono>{_e(first)}</span>" if first else "")
                       + "<div class=cells>" + " · ".join(f"<a href='#{_anchor(x)}'>{_e(_cell_short_id(x))}</a>"
                                                          for x in g) + "</div></li>")
        out.append("</ul></div>")
    else:
        out.append("<div class='findings ok'><b>Every cell agrees with the model and the checker.</b></div>")
    xf = Counter((c.get("explanation") or {}).get("summary") or short_real(c)
                 for c in data["cells"] if c["verdict"] == "expected-fail")
    if xf:
        out.append("<details class=xf><summary>Expected failures by cause</summary><ul>")
        out += [f"<li>{n} × {_e(why)}</li>" for why, n in xf.most_common()]
        out.append("</ul></details>")
    dirs = grid["directions"]
    for caps in grid["capabilities"]:
        names = grid["capabilities"][caps]
        cells = [c for c in data["cells"] if c["caps"] == caps]
        n_ok = sum(c["verdict"] in ("pass", "expected-fail") for c in cells)
        out.append(f"<h2>Capabilities: {_e(caps)}"
                   + (f" <small class=mono>({_e(', '.join(names))})</small>" if names and names != [caps] else "")
                   + f" <small>— {n_ok}/{len(cells)} agree</small></h2>")
        out.append("<table><colgroup><col class=m><col class=d>" + "<col class=dir>" * len(dirs) + "</colgroup>"
                   "<thead><tr><th>machine type</th><th>devices</th>"
                   + "".join(f"<th class=dir>{_e(_arrow(d))}</th>" for d in dirs) + "</tr></thead><tbody>")
        for m in grid["machines"]:
            for i, dev in enumerate(_rows(grid)):
                row = "<tr>"
                if i == 0:
                    row += f"<td class=m rowspan={len(_rows(grid))}>{_e(m)}</td>"
                row += f"<td class=d>{_e(dev)}</td>"
                for d in dirs:
                    c = idx.get((caps, m, dev, d))
                    if c is None:
                        row += "<td class=c>–</td>"
                        continue
                    row += (f"<td class='c {_e(c['verdict'])}' id='{_anchor(c)}' title=\"{_e(cell_text(c))}\"><details>"
                            f"<summary>{_e(_label(c))}</summary><div class=pop>{_popup(c)}</div></details></td>")
                out.append(row + "</tr>")
        out.append("</tbody></table>")
    out.append("<script>document.addEventListener('click',e=>{document.querySelectorAll('td.c details[open]')"
               ".forEach(d=>{if(!d.contains(e.target))d.removeAttribute('open')})});</script>")
    out.append("</body></html>")
    return "\n".join(out)
