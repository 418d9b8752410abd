"""The destination's own -dump-vmstate (check --vmstate) and a stream it saved (--reference)
REFINE the built-in tables of the target version (conformance/rules/tables.py RefinedTables):
what they describe overrides the built-in data, what they cannot express (value rules,
instance ids, RAM block rules, sections outside -dump-vmstate with their version bounds, the
destination's layouts of the VMSDs it declares alike) stays. Giving the destination's own
dump never makes the judge weaker than giving nothing.

The dumps are real (tests/data/vmstate, and fresh ones of both binaries in the qemu test);
the streams are the real captures of tests/data, their value-rule edits (tests/test_value_rules.py)
and the edits only the built-in tables reject (tests/test_same_judge.py)."""

from __future__ import annotations

import gzip
import io
import json
import lzma
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from conformance.check.capture_dir import capture_files
from conformance.check.destination import stream_machine
from conformance.cli import main as cli_main
from conformance.versions import VERSIONS
from wireformat import vmstate

DATA = Path(__file__).parent / "data"
DUMPS = {"7.2": DATA / "vmstate" / "dump-vmstate-qemu72-pc-i440fx-7.2.json.gz",
         "10.0": DATA / "vmstate" / "dump-vmstate-qemu100-pc-i440fx-7.2.json.gz"}
# a stream each destination binary saved itself (machine pc-i440fx-7.2 / -10.0, no devices)
REFERENCES = {"7.2": DATA / "multifd" / "qemu72-i440fx-7.2.main.bin.xz",
              "10.0": DATA / "multifd" / "qemu100-i440fx-10.0.main.bin.xz"}


def check(path: Path, target: str, *extra: str) -> tuple[str, list[str], dict]:
    """`check PATH --json --target TARGET --machine <the stream's>`: verdict, the codes of its
    reject violations, the whole document."""
    main, _ = capture_files(path)
    buf, err = io.StringIO(), io.StringIO()
    with redirect_stdout(buf), redirect_stderr(err):
        code = cli_main(["check", str(path), "--json", "--target", target, "--machine", stream_machine(str(main)),
                         *extra])
    assert code in (0, 1), err.getvalue()
    doc = json.loads(buf.getvalue())
    return doc["verdict"], sorted({v["code"] for v in doc["violations"] if v["severity"] == "reject"}), doc


@pytest.fixture(scope="module")
def given(tmp_path_factory) -> dict:
    """{(kind, version): path} of the real dumps and reference streams, unpacked."""
    d = tmp_path_factory.mktemp("given")
    out = {}
    for version in VERSIONS:
        p = d / f"dump-{version}.json"
        p.write_bytes(gzip.decompress(DUMPS[version].read_bytes()))
        out[("dump", version)] = p
        r = d / f"ref-{version}.bin"
        r.write_bytes(lzma.decompress(REFERENCES[version].read_bytes()))
        out[("ref", version)] = r
    return out


def _options(given: dict, version: str) -> dict[str, list[str]]:
    dump, ref = str(given[("dump", version)]), str(given[("ref", version)])
    return {"vmstate": ["--vmstate", dump], "reference": ["--reference", ref],
            "both": ["--vmstate", dump, "--reference", ref]}


@pytest.mark.parametrize("version", VERSIONS)
def test_value_rule_edits_are_still_rejected_with_the_destinations_own_dump(given, tmp_path, version):
    """Each value rule / instance id / version bound / RAM block edit of a real capture: the
    same verdict and reject codes with the target's real dump, its own stream as reference,
    or both, as with the built-in tables alone."""
    from strategies.fuzz import FuzzInput
    from tests.test_value_rules import CASES, _seed, _units

    seed = _seed(version)
    judged = 0
    for case in CASES:
        if case[0].startswith("vapic"):
            continue  # not judged on this multifd capture (tests/test_value_rules.py)
        p = tmp_path / f"{case[0]}.bin"
        p.write_bytes(FuzzInput(seed, [case[0]], _units(seed, case)).data())
        verdict, codes, _ = check(p, version)
        assert case[4].value in codes, (case[0], codes)
        for name, extra in _options(given, version).items():
            assert check(p, version, *extra)[:2] == (verdict, codes), (case[0], name)
        judged += 1
    assert judged >= 15


def test_edits_only_the_builtin_tables_reject_stay_rejected(given, tmp_path):
    """The layout / version / instance edits of tests/test_same_judge.py: rejected with the
    destination's dump or reference as without; --no-builtin-tables (the dump alone) is the
    weaker judge that passes them."""
    from tests.test_same_judge import BUILTIN_ONLY, _data_streams

    streams = {p.name: p for p in _data_streams(tmp_path)}
    for name, version in sorted(BUILTIN_ONLY):
        verdict, codes, _ = check(streams[name], version)
        assert verdict == "violations", name
        for how, extra in _options(given, version).items():
            assert check(streams[name], version, *extra)[:2] == (verdict, codes), (name, how)
        assert check(streams[name], version, "--vmstate", str(given[("dump", version)]),
                     "--no-builtin-tables")[0] == "conforms", name
    # and the unedited captures: no verdict moves (no false positive from the dump)
    for p in streams.values():
        for version in VERSIONS:
            verdict, codes, _ = check(p, version)
            for how, extra in _options(given, version).items():
                assert check(p, version, *extra)[:2] == (verdict, codes), (p.name, version, how)


def test_a_section_the_dump_lacks_is_unknown_to_the_destination(given, tmp_path):
    """A real -dump-vmstate lists the VMSD of every device class: a device section whose VMSD
    a dump lacks is an unknown section (a one-device dump rejects a real stream's other device
    sections, and says the dump looks partial); the sections registered outside device classes
    (timer, cpu, ram, ...) stay judged by the built-in tables."""
    full_json = json.loads(given[("dump", "7.2")].read_text())
    full = vmstate.parse_dump_vmstate(given[("dump", "7.2")].read_text())
    one = tmp_path / "hpet-only.json"
    one.write_text(json.dumps({k: v for k, v in full_json.items() if k in ("vmschkmachine", "hpet")}))
    stream = given[("ref", "7.2")]
    verdict, codes, doc = check(stream, "7.2", "--vmstate", str(one))
    unknown = {v["section"].rsplit(" (id", 1)[0] for v in doc["violations"] if v["code"] == "unknown-section"}
    expect = {idstr for idstr in _idstrs(stream)
              if full.lookup_idstr(idstr) is not None and full.lookup_idstr(idstr).name != "hpet"}
    assert verdict == "violations" and codes == ["unknown-section"]
    assert unknown == expect and len(expect) >= 15
    assert all("is it the whole dump?" in v["message"] for v in doc["violations"] if v["code"] == "unknown-section")
    assert check(stream, "7.2", "--vmstate", str(given[("dump", "7.2")]))[0] == "conforms"


def _idstrs(path: Path) -> list[str]:
    from wireformat.reader import StreamReader
    from wireformat.records import SectionHeader

    with open(path, "rb") as f:
        return [r.idstr for r in StreamReader(f) if isinstance(r, SectionHeader) and r.is_full]


def test_the_dump_overrides_what_it_describes(given, tmp_path):
    """Versions and declarations from the dump win over the built-in ones: a dump whose hpet
    is only version 1 rejects the stream's hpet v2 (too new); a dump whose hpet declares the
    subsection the edited stream carries does not read hpet by the shipped layout (no
    device-subsection-unknown), while cpu, timer, ... are still read by it."""
    from tests.test_same_judge import _data_streams

    full_json = json.loads(given[("dump", "7.2")].read_text())
    stream = given[("ref", "7.2")]
    assert check(stream, "7.2", "--vmstate", str(given[("dump", "7.2")]))[0] == "conforms"
    old = json.loads(json.dumps(full_json))
    old["hpet"]["Description"]["version_id"] = 1
    old["hpet"]["Description"]["minimum_version_id"] = 1
    p = tmp_path / "hpet-v1.json"
    p.write_text(json.dumps(old))
    verdict, codes, doc = check(stream, "7.2", "--vmstate", str(p))
    assert codes == ["section-version-too-new"]
    assert [v["message"] for v in doc["violations"]] == ["savevm: unsupported version 2 for 'hpet' v1"]

    edited = next(s for s in _data_streams(tmp_path) if s.name == "hpet-unknown-subsection.bin")
    assert "device-subsection-unknown" in check(edited, "7.2", "--vmstate", str(given[("dump", "7.2")]))[1]
    more = json.loads(json.dumps(full_json))
    more["hpet"]["Description"].setdefault("Subsections", []).append(
        {"name": "hpet/no-such-state", "version_id": 1, "minimum_version_id": 1, "Fields": []})
    p = tmp_path / "hpet-more.json"
    p.write_text(json.dumps(more))
    verdict, codes, doc = check(edited, "7.2", "--vmstate", str(p))
    assert "device-subsection-unknown" not in codes
    loaded = check(edited, "7.2")[2]["stats"]["device_state"]
    assert doc["stats"]["device_state"]["no_layout"] == loaded["no_layout"] + 1


@pytest.mark.qemu
def test_real_streams_conform_with_their_destinations_dump_and_reference(capture, qemu, tmp_path):
    """Fresh captures of both binaries, both machine-type families, no devices and e1000+usb,
    checked for each version with that version's fresh -dump-vmstate of the same machine and
    its capture of the same machine and devices as reference: the verdict of the built-in
    tables alone (CONFORMS for every one here), and a value-rule edit stays rejected."""
    from conformance.qemu import dump_vmstate
    from strategies.fuzz import FuzzInput, decode_seed
    from tests.test_value_rules import runstate_edit

    machines = ("pc-i440fx-7.2", "pc-q35-7.2")
    dumps = {}
    for version in VERSIONS:
        for machine in machines:
            dumps[(version, machine)] = dump_vmstate(qemu(version), machine, tmp_path / f"dump-{version}-{machine}.json")
    streams = {}
    for version in VERSIONS:
        for machine in machines:
            for devices in ("none", "e1000+usb"):
                p = tmp_path / f"src{version}-{machine}-{devices}.bin"
                shutil.copy(capture(version, machine, devices).path, p)
                streams[(version, machine, devices)] = p
    for (version, machine, devices), p in streams.items():
        for target in VERSIONS:
            ref = streams[(target, machine, devices)]
            base = check(p, target)
            assert base[0] == "conforms", (p.name, target, base[1])
            for extra in (["--vmstate", str(dumps[(target, machine)])], ["--reference", str(ref)]):
                assert check(p, target, *extra)[:2] == base[:2], (p.name, target, extra)
        seed = decode_seed(p.read_bytes())
        bad = tmp_path / f"bogus-{p.name}"
        bad.write_bytes(FuzzInput(seed, ["runstate"], runstate_edit(seed, b"bogus")).data())
        got = check(bad, version, "--vmstate", str(dumps[(version, machine)]), "--reference", str(p))
        assert got[0] == "violations" and "device-value-check" in got[1], (bad.name, got[1])
