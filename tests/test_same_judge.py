"""The same judge everywhere (conformance/check/judge.py): `migconform check --json`, the
pytest plugin's capture items, the matrix's checker column (matrix.cell.check_capture),
replay's prediction (tools.capture._predict) and `vmstate-diff --stream-a` give one verdict
and one list of violation codes for the same stream and the same destination (version and
machine type).

The streams: the real captures in tests/data (main streams, and a multifd capture directory),
edits of them that break a value rule, and edits that only the built-in destination tables
reject (a subsection a 7.2 destination's layout lacks, a section instance or version no
destination registers): `check --no-builtin-tables` passes those, so a caller without the
built-in tables would too. The qemu test does the same on fresh captures of both binaries."""

from __future__ import annotations

import io
import json
import lzma
import re
import shutil
import xml.etree.ElementTree as ET
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from conformance.check.capture_dir import capture_files
from conformance.check.destination import stream_machine
from conformance.cli import main as cli_main
from conformance.versions import VERSIONS

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
MULTIFD = ROOT / "tests" / "data" / "multifd"
# (stream, target) pairs `check` rejects only with the built-in destination tables
BUILTIN_ONLY = {("cpu-fred.bin", "7.2"), ("hpet-unknown-subsection.bin", "10.0"), ("timer-too-old.bin", "7.2"),
                ("ram-instance.bin", "10.0"), ("pcibus-nirq.bin", "7.2")}


def _data_streams(d: Path) -> list[Path]:
    """The real captures of tests/data and edits of them, written into `d`."""
    from strategies.fuzz import FuzzInput
    from tests.test_dest_vmsd import MUTATIONS, _mutate
    from tests.test_value_rules import CASES, _seed, _units

    out = []
    for src in sorted(MULTIFD.glob("*.main.bin.xz")):
        p = d / src.name[: -len(".xz")]
        p.write_bytes(lzma.decompress(src.read_bytes()))
        out.append(p)
    cap = d / "multifd-10.0"  # a capture directory: main stream and two multifd channels, with a manifest
    cap.mkdir()
    names = [f"qemu100-i440fx-10.0.{part}.bin.xz" for part in ("main", "multifd0", "multifd1")]
    for n in names:
        shutil.copy(MULTIFD / n, cap / n)
    (cap / "manifest.json").write_text('{"main": "%s", "channels": ["%s", "%s"]}' % tuple(names))
    out.append(cap)
    raw = (d / "qemu100-i440fx-7.2.main.bin").read_bytes()
    for name in ("cpu-fred", "hpet-unknown-subsection", "pcibus-nirq"):
        idstr, body_fn, desc_fn = MUTATIONS[name]
        p = d / f"{name}.bin"
        p.write_bytes(_mutate(raw, idstr, body_fn, desc_fn))
        out.append(p)
    seed = _seed("7.2")
    for case in CASES:
        if case[0] in ("timer-too-old", "ram-instance", "pci-device-id", "hpet-timers-2"):
            p = d / f"{case[0]}.bin"
            p.write_bytes(FuzzInput(seed, [case[0]], _units(seed, case)).data())
            out.append(p)
    return out


def _machine(path: Path) -> str:
    main, _ = capture_files(path)
    m = stream_machine(str(main))
    assert m, path
    return m


# ---------------------------------------------------------------- the callers

def by_cli(path: Path, target: str, machine: str, *extra: str) -> tuple[str, list[str]]:
    buf = io.StringIO()
    with redirect_stdout(buf):
        code = cli_main(["check", str(path), "--json", "--target", target, "--machine", machine, *extra])
    doc = json.loads(buf.getvalue())
    assert code == (1 if doc["violations"] else 0)
    return doc["verdict"], [v["code"] for v in doc["violations"]]


def by_matrix(path: Path, target: str, machine: str) -> tuple[str, list[str]]:
    from conformance.tools.matrix.cell import check_capture

    cv = check_capture(path, target, machine)
    assert cv.ok is not None and cv.ok == (not any(v["severity"] == "reject" for v in cv.violations))
    return ("violations" if cv.violations else "conforms"), [v["code"] for v in cv.violations]


def by_replay(path: Path, target: str, machine: str) -> tuple[str, list[str]]:
    from conformance.tools.capture import _predict

    main, channels = capture_files(path)
    rep = _predict(main, channels, target, machine, (), {}, {})
    return rep.verdict, [v.code.value for v in rep.violations]


def by_vmstate_diff(path: Path, target: str, machine: str, tmp: Path) -> tuple[str, list[str]]:
    """The A->B judgement of `vmstate-diff A.json B.json --stream-a PATH --b-version TARGET`
    (dumps of `machine` without devices: no difference of their own)."""
    dump = tmp / f"dump-{machine}.json"
    dump.write_text(json.dumps({"vmschkmachine": {"Name": machine}}))
    buf = io.StringIO()
    with redirect_stdout(buf):
        code = cli_main(["vmstate-diff", str(dump), str(dump), "--stream-a", str(path), "--b-version", target,
                         "--json"])
    doc = json.loads(buf.getvalue())
    judged = doc["judged"]["A->B"]
    assert judged["destination"] == {"version": target, "machine": machine}
    assert code == (1 if judged["rejected"] else 0) and doc["differences"] == []
    return judged["verdict"], [v["code"] for v in judged["violations"]]


_LINE = re.compile(r"^\s+(?:reject|silent-loss|deviation)\s+(\S+)\s", re.M)


def by_plugin(pytester, monkeypatch, paths: list[Path], target: str, machine: str) -> dict[str, tuple[str, list[str]]]:
    """Each path as a capture item of `pytest --captures=DIR --captures-target=TARGET
    --captures-machine=MACHINE`: passed -> conforms; failed -> its violation lines' codes."""
    d = pytester.path / f"captures-{target}-{machine}"
    d.mkdir()
    for p in paths:
        (shutil.copytree if p.is_dir() else shutil.copy)(p, d / p.name)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    for k in ("HYPOTHESIS_PROFILE", "CI", "PYTEST_ADDOPTS"):
        monkeypatch.delenv(k, raising=False)
    xml = d.with_suffix(".xml")
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "conformance.pytest_plugin", f"--captures={d}",
                                      f"--captures-target={target}", f"--captures-machine={machine}",
                                      "--junitxml", str(xml), timeout=300)
    assert "Traceback" not in r.stdout.str()
    out = {}
    for case in ET.parse(xml).iter("testcase"):
        name = case.get("name").rsplit("[", 1)[0]
        failure = case.find("failure")
        out[name] = ("conforms", []) if failure is None else ("violations", _LINE.findall(failure.text or ""))
    assert set(out) == {p.name for p in paths}, r.stdout.str()
    return out


def judged_everywhere(pytester, monkeypatch, tmp: Path, streams: list[Path]) -> dict:
    """{(stream, target): verdict and codes}, asserting every caller gives the same."""
    groups: dict[str, list[Path]] = {}
    for p in streams:
        groups.setdefault(_machine(p), []).append(p)
    seen, differ = {}, []
    for target in VERSIONS:
        for machine, paths in groups.items():
            plugin = by_plugin(pytester, monkeypatch, paths, target, machine)
            for p in paths:
                got = {"check": by_cli(p, target, machine), "plugin": plugin[p.name],
                       "matrix": by_matrix(p, target, machine), "replay": by_replay(p, target, machine)}
                if p.is_file():  # vmstate-diff reads a stream file's VMDESCRIPTION
                    got["vmstate-diff"] = by_vmstate_diff(p, target, machine, tmp)
                if len({(v, tuple(c)) for v, c in got.values()}) != 1:
                    differ.append((p.name, target, got))
                seen[(p.name, target)] = got["check"]
    assert not differ, json.dumps(differ, indent=1)
    return seen


def test_every_caller_gives_checks_verdict(pytester, monkeypatch, tmp_path):
    streams = _data_streams(tmp_path)
    seen = judged_everywhere(pytester, monkeypatch, tmp_path, streams)
    assert len(seen) == len(streams) * len(VERSIONS)
    # not a vacuous agreement: the set holds conforming streams, value-rule rejections, and
    # streams only the built-in destination tables reject (a caller without them passes them)
    assert seen[("qemu72-i440fx-7.2.main.bin", "10.0")] == ("conforms", [])
    assert "pci-config-read-only" in seen[("pci-device-id.bin", "10.0")][1]
    assert seen[("cpu-fred.bin", "10.0")] == ("conforms", [])
    for name, target in sorted(BUILTIN_ONLY):
        assert seen[(name, target)][0] == "violations", (name, target)
        p = tmp_path / name
        assert by_cli(p, target, _machine(p), "--no-builtin-tables") == ("conforms", []), (name, target)
    assert seen[("cpu-fred.bin", "7.2")][1] == ["device-subsection-unknown"]


@pytest.mark.qemu
def test_every_caller_gives_checks_verdict_on_fresh_captures(pytester, monkeypatch, tmp_path, capture):
    """Real streams of both binaries, with devices, on both machine-type families; and the
    10.0 one with cpu/fred added (a 7.2 destination's layout lacks it)."""
    from tests.test_dest_vmsd import MUTATIONS, _mutate

    streams = []
    for version in VERSIONS:
        for machine in ("pc-i440fx-7.2", "pc-q35-7.2"):
            p = tmp_path / f"src{version}-{machine}.bin"
            shutil.copy(capture(version, machine, "e1000+usb").path, p)
            streams.append(p)
    idstr, body_fn, desc_fn = MUTATIONS["cpu-fred"]
    fred = tmp_path / "src10.0-fred.bin"
    fred.write_bytes(_mutate(streams[-1].read_bytes(), idstr, body_fn, desc_fn))
    streams.append(fred)
    seen = judged_everywhere(pytester, monkeypatch, tmp_path, streams)
    assert seen[(fred.name, "7.2")][0] == "violations" and "device-subsection-unknown" in seen[(fred.name, "7.2")][1]
    assert by_cli(fred, "7.2", "pc-q35-7.2", "--no-builtin-tables")[0] == "conforms"
