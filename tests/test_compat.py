"""Compat data (conformance/rules/compat/data) and model: schema, model semantics, the compat
promise as a property, and facts cross-checked against the real 7.2 and 10.0 binaries
(`qemu` marker: skipped with a reason when a binary is absent, failing under CI=true)."""

from __future__ import annotations

import json
import os
import re
from importlib import resources

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conformance.rules.compat import (
    WIRE_PROPERTIES,
    UnknownMachine,
    UnknownVersion,
    capabilities,
    capability_errors,
    effective_properties,
    load,
    machine_types,
    parse_globals,
    predict,
    resolve_machine,
    versions,
    wire_properties,
)

VERSIONS = ("7.2", "8.0", "8.1", "8.2", "9.0", "9.1", "9.2", "10.0", "10.1", "10.2")
MACHINE_RE = re.compile(r"^pc-(i440fx|q35)-(\d+)\.(\d+)(\.\d+)?$")
LIST_RE = re.compile(r"^(hw|pc)_compat_(\d+)_(\d+)$")


def vt(v: str) -> tuple[int, int]:
    a, b = v.split(".")[:2]
    return int(a), int(b)


# ---------------------------------------------------------------- schema

def _raw(name: str) -> dict:
    return json.loads(resources.files("conformance.rules.compat").joinpath("data", name).read_text(encoding="utf-8"))


def test_versions_present():
    assert versions() == VERSIONS


@pytest.mark.parametrize("version", VERSIONS)
def test_version_file_schema(version):
    raw = _raw(f"qemu-{version}.json")
    assert raw["schema"] == 1 and raw["version"] == version and raw["basis"]
    assert set(raw) >= {"machine_types", "aliases", "family_defaults", "compat_lists", "migration_properties"}
    names = [m["name"] for m in raw["machine_types"]]
    assert len(names) == len(set(names))
    for m in raw["machine_types"]:
        mm = MACHINE_RE.match(m["name"])
        assert mm, m
        assert m["family"] == f"pc-{mm[1]}"
        assert m["compat_level"] == f"{mm[2]}.{mm[3]}"
        assert vt(m["compat_level"]) <= vt(version)
        assert isinstance(m["deprecated"], bool) and isinstance(m["verified"], bool) and m["source"]
    for fam in ("pc-i440fx", "pc-q35"):
        newest = max((m for m in raw["machine_types"] if m["family"] == fam), key=lambda m: vt(m["compat_level"]))
        assert newest["compat_level"] == version
    assert raw["aliases"] == {"pc": f"pc-i440fx-{version}", "q35": f"pc-q35-{version}"}
    for name, L in raw["compat_lists"].items():
        lm = LIST_RE.match(name)
        assert lm, name
        assert (int(lm[2]), int(lm[3])) < vt(version), f"{name} cannot exist in {version}"
        assert L["source"]
        for e in L["entries"]:
            assert {"driver", "property", "value", "source", "verified"} <= set(e), e
            assert all(isinstance(e[k], str) and e[k] for k in ("driver", "property", "source")), e
            assert isinstance(e["value"], str) and isinstance(e["verified"], bool)
            assert set(e) <= {"driver", "property", "value", "source", "verified", "optional"}, e
    # the newest list of the release is the one of the previous release
    levels = sorted({vt(n.split("_", 2)[2].replace("_", ".")) for n in raw["compat_lists"]})
    assert levels[-1] < vt(version)
    for fam, es in raw["family_defaults"].items():
        assert fam in ("pc-i440fx", "pc-q35")
        for e in es:
            assert {"driver", "property", "value", "source", "verified"} <= set(e)
    assert set(raw["migration_properties"]) >= set(WIRE_PROPERTIES)
    for k, d in raw["migration_properties"].items():
        assert isinstance(d["exists"], bool) and d["source"] and isinstance(d["verified"], bool), k


def test_capabilities_file_schema():
    raw = _raw("capabilities.json")
    assert raw["schema"] == 1 and tuple(raw["versions"]) == VERSIONS
    for name, c in raw["capabilities"].items():
        assert re.match(r"^[a-z0-9-]+$", name)
        assert c["source"] and c["wire"] in ("none", "must_match", "validated")
        for v in (c["since"], c["removed"], c["deprecated"]):
            assert v is None or re.match(r"^\d+\.\d+$", v)
    ids = [r["id"] for r in raw["rules"]]
    assert len(ids) == len(set(ids))
    for r in raw["rules"]:
        assert r["error"] and r["source"]
        assert set(r["when"]["all"]) | set(r["when"]["none"]) <= set(raw["capabilities"]), r["id"]
        assert r["from"] in VERSIONS and (r["to"] is None or r["to"] in VERSIONS)
        assert set(r["verified"]) <= {"7.2", "10.0"}


def test_every_list_a_machine_needs_is_defined():
    """A machine type of level L on release R applies every list R defines at or above L;
    hw_compat_X_Y exists for each release X.Y from 2.4 on (hw_compat_2_2/2_0 are empty or
    absent in the trees read, pc_compat lists may be empty but exist)."""
    for v in VERSIONS:
        vd = load(v)
        for m in vd.machine_types:
            applied = vd.applied_lists(m.name)
            levels = {vt(n.split("_", 2)[2].replace("_", ".")) for n in applied}
            releases = {vt(x.compat_level) for x in vd.machine_types if x.level >= m.level and x.level < vd.vt}
            assert releases <= levels, (v, m.name, sorted(releases - levels))


# ---------------------------------------------------------------- model semantics

def test_load_accepts_full_versions_and_rejects_unknown():
    assert load("10.0.2") is load("10.0")
    with pytest.raises(UnknownVersion):
        load("6.2")
    with pytest.raises(UnknownMachine):
        load("10.0").machine("pc-i440fx-1.4")


def test_older_list_overrides_newer():
    # hw_compat_4_0 sets qemu-4-0-config-size=true, hw_compat_3_1 false: 3.1 and older see false
    assert effective_properties("7.2", "pc-i440fx-4.0")[("virtio-balloon-device", "qemu-4-0-config-size")] == "true"
    assert effective_properties("7.2", "pc-i440fx-3.1")[("virtio-balloon-device", "qemu-4-0-config-size")] == "false"
    # q35 board default aw-bits=39 (9.0+) is overridden by hw_compat_8_2 aw-bits=64 for <= 8.2
    assert effective_properties("10.0", "pc-q35-8.2")[("virtio-iommu-pci", "aw-bits")] == "64"
    assert effective_properties("10.0", "pc-q35-9.0")[("virtio-iommu-pci", "aw-bits")] == "39"
    assert ("virtio-iommu-pci", "aw-bits") not in effective_properties("10.0", "pc-i440fx-9.0")


def test_bugfix_machine_type_and_aliases():
    # pc-q35-4.0.1 applies the 4.0 lists (it is a 4.0 with another irqchip default)
    vd = load("10.0")
    assert vd.applied_lists("pc-q35-4.0.1") == vd.applied_lists("pc-q35-4.0")
    assert "hw_compat_4_0" in vd.applied_lists("pc-q35-4.0.1")
    assert resolve_machine("7.2", "pc") == "pc-i440fx-7.2"
    assert resolve_machine("10.0", "q35") == "pc-q35-10.0"
    assert effective_properties("10.0", "pc") == effective_properties("10.0", "pc-i440fx-10.0")


def test_globals_applied_last_and_parsed():
    assert parse_globals(["migration.send-configuration=off", "driver=e1000e,property=migrate-timadj,value=on",
                          ("a", "b", "c")]) == [("migration", "send-configuration", "off"),
                                                ("e1000e", "migrate-timadj", "on"), ("a", "b", "c")]
    assert parse_globals({("x", "y"): "1", "d.p": "v"}) == [("x", "y", "1"), ("d", "p", "v")]
    with pytest.raises(ValueError):
        parse_globals(["nodot=1"])
    eff = effective_properties("10.0", "pc-i440fx-7.2", ["e1000e.migrate-timadj=on"])
    assert eff[("e1000e", "migrate-timadj")] == "on"
    assert wire_properties("10.0", "pc-i440fx-10.0", ["migration.send-switchover-start=off"])["send-switchover-start"] == "off"


# (version, machine) -> expected wire knobs, from the hw_compat_* arrays (hw/core/machine.c) of each release
WIRE_FACTS = [
    ("7.2", "pc-i440fx-2.3", {"send-configuration": "off", "send-section-footer": "off", "store-global-state": "off"}),
    ("7.2", "pc-i440fx-2.4", {"send-configuration": "on", "send-section-footer": "on", "store-global-state": "on"}),
    ("7.2", "pc-i440fx-7.2", {"send-switchover-start": "off", "zero-page-detection": "legacy",
                              "multifd-flush-after-each-section": "on", "x-preempt-pre-7-2": "on"}),
    ("8.0", "pc-i440fx-8.0", {"x-preempt-pre-7-2": "off", "multifd-flush-after-each-section": "on"}),
    ("8.1", "pc-i440fx-8.0", {"multifd-flush-after-each-section": "on"}),
    ("8.1", "pc-i440fx-8.1", {"multifd-flush-after-each-section": "off"}),
    ("10.0", "pc-i440fx-7.2", {"x-preempt-pre-7-2": "on", "send-switchover-start": "off"}),
    ("10.0", "pc-i440fx-8.0", {"x-preempt-pre-7-2": "off", "multifd-flush-after-each-section": "on"}),
    ("10.0", "pc-i440fx-8.2", {"zero-page-detection": "legacy", "multifd-flush-after-each-section": "off"}),
    ("10.0", "pc-i440fx-9.0", {"zero-page-detection": "multifd"}),
    ("10.0", "pc-q35-9.2", {"send-switchover-start": "off", "multifd-clean-tls-termination": "off"}),
    ("10.0", "pc-q35-10.0", {"send-switchover-start": "on", "multifd-clean-tls-termination": "on"}),
    ("10.2", "pc-q35-10.1", {"send-switchover-start": "on", "zero-page-detection": "multifd"}),
]


@pytest.mark.parametrize("version,machine,expect", WIRE_FACTS)
def test_wire_facts(version, machine, expect):
    got = wire_properties(version, machine)
    assert {k: got[k] for k in expect} == expect


def test_machine_type_ranges():
    mt = {v: set(machine_types(v)) for v in VERSIONS}
    assert "pc-i440fx-1.4" in mt["8.1"] and "pc-i440fx-1.4" not in mt["8.2"]
    assert "pc-i440fx-2.3" in mt["9.0"] and "pc-i440fx-2.3" not in mt["9.1"]
    assert "pc-q35-2.4" in mt["10.0"] and "pc-q35-4.1" not in mt["10.1"] and "pc-q35-4.2" in mt["10.1"]
    assert min(mt["10.2"], key=lambda n: vt(n.rsplit("-", 1)[1])) in ("pc-i440fx-5.0", "pc-q35-5.0")
    assert "pc-q35-4.0.1" in mt["10.0"] and "pc-q35-4.0.1" not in mt["10.1"]
    assert machine_types("10.0", include_deprecated=False)[0] == "pc-i440fx-7.1"


# ---------------------------------------------------------------- capabilities

@pytest.mark.parametrize("version,refused", [("7.2", False), ("8.0", False), ("8.1", True), ("9.2", True),
                                             ("10.0", True), ("10.1", False), ("10.2", False)])
def test_postcopy_multifd_by_version(version, refused):
    errs = capability_errors(version, ["postcopy-ram", "multifd"])
    assert (errs == ["Postcopy is not yet compatible with multifd"]) == refused, errs
    assert not refused == (errs == [])


def test_capability_rules():
    assert capability_errors("10.0", ["switchover-ack"]) == ["Capability 'switchover-ack' requires capability 'return-path'"]
    assert capability_errors("10.0", ["switchover-ack", "return-path"]) == []
    assert capability_errors("7.2", ["switchover-ack"])[0].startswith("Parameter 'capability' does not accept value 'switchover-ack'")
    assert capability_errors("9.1", ["compress"])[0].endswith("(capability removed in 9.1)")
    assert capability_errors("9.0", ["mapped-ram", "postcopy-ram"]) == ["Mapped-ram migration is incompatible with postcopy"]
    assert capability_errors("7.2", ["multifd", "xbzrle"]) == []
    assert capability_errors("8.2", ["multifd", "xbzrle"]) == ["Multifd is not compatible with xbzrle"]
    assert "dirty-limit requires KVM with accelerator property 'dirty-ring-size' set" not in capability_errors("10.0", ["dirty-limit"])
    assert capability_errors("10.0", ["dirty-limit"], include_environment=True)


# ---------------------------------------------------------------- predict

def test_predict_examples():
    assert predict("7.2", "10.0", "pc-i440fx-7.2").compatible
    assert predict("10.0", "7.2", "pc-q35-7.2").compatible
    p = predict("7.2", "10.0", "pc-i440fx-1.4")
    assert not p and "unsupported machine type" in p.reasons[0] and "10.0" in p.reasons[0]
    p = predict("10.0", "7.2", "pc")
    assert not p and "pc-i440fx-10.0" in p.reasons[0] and "pc-i440fx-7.2" in p.reasons[0]
    p = predict("10.0", "7.2", "pc-i440fx-10.0")
    assert not p and "unsupported machine type" in p.reasons[0]
    p = predict("7.2", "10.0", "pc-i440fx-7.2", ["postcopy-ram", "multifd"])
    assert not p and any("Postcopy is not yet compatible with multifd" in r and "10.0" in r for r in p.reasons)
    assert predict("7.2", "10.1", "pc-i440fx-7.2", ["postcopy-ram", "multifd"]).compatible
    # SWITCHOVER_START sent to a release without the command
    p = predict("10.0", "7.2", "pc-i440fx-7.2", globals_=["migration.send-switchover-start=on"], dst_globals=())
    assert not p and any(r.startswith("send-switchover-start: on on the source (10.0), off on the destination (7.2)")
                         for r in p.reasons), p.reasons
    # the same -global on both ends: 7.2 does not even start
    p = predict("10.0", "7.2", "pc-i440fx-7.2", globals_=["migration.send-switchover-start=on"])
    assert any("has no property migration.send-switchover-start" in r for r in p.reasons)
    # a 9.0+ zero-page layout to an 8.2 destination, only with multifd
    g = ["migration.zero-page-detection=multifd"]
    assert not predict("10.0", "8.2", "pc-q35-8.2", ["multifd"], g, dst_globals=())
    assert predict("10.0", "8.2", "pc-q35-8.2", [], g, dst_globals=()).compatible
    # TLS multifd from a pre-10.0 source to a strict 10.0 destination
    p = predict("9.2", "10.0", "pc-q35-9.2", ["multifd"], dst_globals=["migration.multifd-clean-tls-termination=on"], tls=True)
    assert not p and "multifd-clean-tls-termination" in p.reasons[0]
    assert predict("9.2", "10.0", "pc-q35-9.2", ["multifd"], tls=True).compatible
    # a stable backport that the other release lacks shows up as a warning
    w = predict("7.2", "8.0", "pc-i440fx-5.2").warnings
    assert any(x.startswith("nvme.msix-exclusive-bar: on on the source (7.2)") for x in w), w


# ---------------------------------------------------------------- properties (hypothesis)

def _common():
    out = []
    for a in VERSIONS:
        for b in VERSIONS:
            common = sorted(set(machine_types(a)) & set(machine_types(b)))
            out += [(a, b, m) for m in common]
    return out


COMMON = _common()


@settings(deadline=None)
@given(st.sampled_from(COMMON))
def test_compat_promise(case):
    """Same machine type, no user globals: every wire knob agrees, and nothing blocks."""
    src, dst, machine = case
    assert wire_properties(src, machine) == wire_properties(dst, machine)
    p = predict(src, dst, machine)
    assert p.compatible, p.reasons


def test_compat_promise_exhaustive():
    for src, dst, machine in COMMON:
        if src < dst:
            continue
        assert wire_properties(src, machine) == wire_properties(dst, machine), (src, dst, machine)


# knob -> capabilities that make a difference matter, and whether a difference always blocks
_KNOB_CASES = {
    "send-configuration": ((), True),
    "send-section-footer": ((), True),
    "multifd-flush-after-each-section": (("multifd",), True),
    "x-preempt-pre-7-2": (("postcopy-ram", "postcopy-preempt"), True),
    "store-global-state": ((), False),
    "send-switchover-start": ((), None),  # blocks only towards a release without the command
    "zero-page-detection": (("multifd",), None),  # blocks only a 9.0+ layout towards < 9.0
    "multifd-clean-tls-termination": (("multifd",), None),
}


@settings(deadline=None)
@given(st.sampled_from(COMMON), st.sampled_from(WIRE_PROPERTIES), st.data())
def test_user_global_breaks_promise(case, knob, data):
    """A -global on the source alone that changes a wire knob is named by predict(): in the
    reasons when the difference stops the migration, else in the warnings."""
    src, dst, machine = case
    if not load(src).migration_properties[knob]["exists"]:
        return
    current = wire_properties(src, machine)[knob]
    choices = ["legacy", "multifd", "none"] if knob == "zero-page-detection" else ["on", "off"]
    value = data.draw(st.sampled_from([c for c in choices if c != current]))
    caps, blocks = _KNOB_CASES[knob]
    if capability_errors(src, caps) or capability_errors(dst, caps):
        return
    g = [f"migration.{knob}={value}"]
    p = predict(src, dst, machine, caps, g, dst_globals=(), tls=True)
    named_reason = any(r.startswith(f"{knob}: ") for r in p.reasons)
    named_warning = any(w.startswith(f"{knob}: ") for w in p.warnings)
    dst_w = wire_properties(dst, machine)[knob]
    if blocks is True:
        assert not p.compatible and named_reason, (p.reasons, p.warnings)
        assert f"{value} on the source ({load(src).version})" in next(r for r in p.reasons if r.startswith(knob))
    elif blocks is False:
        assert p.compatible and named_warning
    else:
        assert named_reason or named_warning or value == dst_w or knob == "zero-page-detection", (p.reasons, p.warnings)
        if knob == "send-switchover-start":
            assert named_reason == (value == "on" and vt(dst) < (10, 0))
        if knob == "zero-page-detection":
            assert named_reason == (value == "multifd" and vt(dst) < (9, 0))
        if knob == "multifd-clean-tls-termination":
            assert not named_reason  # the source's setting never blocks
    # the same -global on both ends of the same release: nothing to complain about
    if src == dst:
        assert not any(r.startswith(f"{knob}: ") for r in predict(src, dst, machine, caps, g, tls=True).reasons)


# ---------------------------------------------------------------- real binaries

def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes", "on")


@pytest.fixture(scope="module")
def binary():
    from conformance.qemu.binaries import QemuNotFound, require

    cache = {}

    def get(version: str):
        if version not in cache:
            try:
                cache[version] = require(version)
            except QemuNotFound as e:
                if _ci():
                    pytest.fail(f"{e} (CI is set: every QEMU version must be present)", pytrace=False)
                pytest.skip(str(e))
        return cache[version]

    return get


def _qemu(binary, machine, *args):
    from conformance.qemu.process import QemuProcess

    return QemuProcess(binary, ["-machine", machine, *args])


def _help(binary):
    r = binary.run("-machine", "help", timeout=30)
    assert r.returncode == 0, r.stderr
    rows = {}
    for line in r.stdout.splitlines()[1:]:
        if line.strip():
            name, _, desc = line.strip().partition(" ")
            rows[name] = desc.strip()
    return rows


@pytest.mark.qemu
@pytest.mark.parametrize("version", ["7.2", "10.0"])
def test_machine_types_match_binary(binary, version):
    rows = _help(binary(version))
    real = {n for n in rows if MACHINE_RE.match(n)}
    assert set(machine_types(version)) == real
    vd = load(version)
    for m in vd.machine_types:
        assert m.verified
        assert m.deprecated == ("(deprecated)" in rows[m.name]), m.name
    for alias, target in vd.aliases.items():
        assert f"(alias of {target})" in rows[alias]


def _hmp_globals(q) -> dict[str, str]:
    out = q.cmd("human-monitor-command", {"command-line": "info migrate"})
    return dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)


_KNOB_MACHINES = {
    "7.2": ["pc-i440fx-2.3", "pc-i440fx-2.12", "pc-i440fx-3.0", "pc-i440fx-7.2", "pc-q35-2.4"],
    "10.0": ["pc-i440fx-2.4", "pc-i440fx-7.2", "pc-i440fx-8.2", "pc-i440fx-9.0", "pc-q35-9.2", "pc-q35-10.0"],
}


@pytest.mark.qemu
@pytest.mark.parametrize("version", ["7.2", "10.0"])
def test_wire_properties_match_binary(binary, version):
    """`info migrate` prints the migration object's globals; query-migrate-parameters the
    zero-page-detection parameter (9.0+)."""
    b = binary(version)
    for machine in _KNOB_MACHINES[version]:
        model = wire_properties(version, machine)
        eff = effective_properties(version, machine)
        with _qemu(b, machine) as q:
            real = _hmp_globals(q)
            params = q.cmd("query-migrate-parameters")
        for knob in ("send-configuration", "send-section-footer", "store-global-state", "send-switchover-start"):
            if load(version).migration_properties[knob]["exists"]:
                assert real[knob] == model[knob], (machine, knob)
            else:
                assert knob not in real
        if load(version).migration_properties["zero-page-detection"]["exists"]:
            assert params["zero-page-detection"] == model["zero-page-detection"], machine
        else:
            assert "zero-page-detection" not in params
        if "decompress-error-check" in real:
            assert real["decompress-error-check"] == eff.get(("migration", "decompress-error-check"), "on")


@pytest.mark.qemu
@pytest.mark.parametrize("version", ["7.2", "10.0"])
def test_migration_property_existence_matches_binary(binary, version):
    """-global migration.X=... is refused by a release without X ("can't apply global")."""
    from conformance.qemu.process import QemuError

    b = binary(version)
    props = dict(load(version).migration_properties)
    for knob, info in props.items():
        value = "legacy" if knob == "zero-page-detection" else "on"
        try:
            with _qemu(b, "pc", "-global", f"migration.{knob}={value}"):
                accepted = True
        except QemuError as e:
            assert "can't apply global" in str(e), str(e)
            accepted = False
        assert accepted == info["exists"], knob


# (version, list, driver, property, machine where the list applies, machine where it does not,
#  -device arguments, qom path: device id plus child, or "cpu0")
DEVICE_CHECKS = [
    ("7.2", "hw_compat_7_1", "virtio-device", "queue_reset", "pc-i440fx-7.1", "pc-i440fx-7.2", "virtio-net-pci,id=d0", "d0/virtio-backend"),
    ("7.2", "hw_compat_6_0", "e1000", "init-vet", "pc-i440fx-6.0", "pc-i440fx-6.1", "e1000,id=d0", "d0"),
    ("7.2", "hw_compat_5_2", "nvme", "msix-exclusive-bar", "pc-i440fx-5.2", "pc-i440fx-6.0", "nvme,id=d0,serial=mc0", "d0"),
    ("7.2", "hw_compat_2_7", "virtio-pci", "page-per-vq", "pc-i440fx-2.7", "pc-i440fx-2.8", "virtio-net-pci,id=d0", "d0"),
    ("7.2", "pc_compat_6_0", "qemu64-x86_64-cpu", "family", "pc-i440fx-6.0", "pc-i440fx-6.1", None, "cpu0"),
    ("7.2", "pc_compat_2_7", "x86_64-cpu", "l3-cache", "pc-i440fx-2.7", "pc-i440fx-2.8", None, "cpu0"),
    ("7.2", "pc_compat_2_3", "qemu64-x86_64-cpu", "model-id", "pc-i440fx-2.3", "pc-i440fx-2.4", None, "cpu0"),
    ("10.0", "hw_compat_7_2", "e1000e", "migrate-timadj", "pc-i440fx-7.2", "pc-i440fx-8.0", "e1000e,id=d0", "d0"),
    ("10.0", "hw_compat_9_1", "pci-device", "x-pcie-ext-tag", "pc-i440fx-9.1", "pc-i440fx-9.2", "e1000e,id=d0", "d0"),
    ("10.0", "hw_compat_8_1", "virtio-net-device", "host_uso", "pc-i440fx-8.1", "pc-i440fx-8.2", "virtio-net-pci,id=d0", "d0/virtio-backend"),
    ("10.0", "hw_compat_9_2", "virtio-balloon-pci", "vectors", "pc-i440fx-9.2", "pc-i440fx-10.0", "virtio-balloon-pci,id=d0", "d0"),
    ("10.0", "pc_compat_9_0", "x86_64-cpu", "x-l1-cache-per-thread", "pc-i440fx-9.0", "pc-i440fx-9.1", None, "cpu0"),
    ("10.0", "hw_compat_7_1", "virtio-device", "queue_reset", "pc-q35-7.1", "pc-q35-7.2", "virtio-net-pci,id=d0", "d0/virtio-backend"),
    ("10.0", "hw_compat_5_2", "nvme", "msix-exclusive-bar", "pc-q35-5.2", "pc-q35-6.0", "nvme,id=d0,serial=mc0", "d0"),
    ("10.0", "hw_compat_6_0", "e1000", "init-vet", "pc-i440fx-6.0", "pc-i440fx-6.1", "e1000,id=d0", "d0"),
]


def _same(real, compat: str) -> bool:
    if isinstance(real, bool):
        return real == (compat.lower() in ("on", "true", "yes"))
    if isinstance(real, int):
        return real == int(compat, 0)
    return str(real) == compat


def _read(q, device, path, prop):
    if path == "cpu0":
        qom = q.cmd("query-cpus-fast")[0]["qom-path"]
    else:
        qom = "/machine/peripheral/" + path
    return q.cmd("qom-get", path=qom, property=prop)


@pytest.mark.qemu
@pytest.mark.parametrize("check", DEVICE_CHECKS, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}.{c[3]}")
def test_device_compat_values_match_binary(binary, check):
    version, lst, driver, prop, applied, not_applied, device, path = check
    vd = load(version)
    entry = next(e for e in vd.compat_lists[lst] if (e.driver, e.property) == (driver, prop))
    assert entry.verified, "entries checked here are marked verified in the data"
    assert effective_properties(version, applied)[(driver, prop)] == entry.value
    assert lst in vd.applied_lists(applied) and lst not in vd.applied_lists(not_applied)
    b = binary(version)
    extra = ["-device", device] if device else []
    with _qemu(b, applied, *extra) as q:
        on = _read(q, device, path, prop)
    with _qemu(b, not_applied, *extra) as q:
        off = _read(q, device, path, prop)
    assert _same(on, entry.value), (applied, on, entry.value)
    assert not _same(off, entry.value), (not_applied, off, entry.value)


def test_verified_entries_are_checked():
    """Every compat entry marked verified is covered by a binary check in this file."""
    covered = {(c[0], c[1], c[2], c[3]) for c in DEVICE_CHECKS}
    covered |= {("7.2", "hw_compat_2_3", "migration", k) for k in ("send-configuration", "send-section-footer", "store-global-state")}
    covered |= {("7.2", "hw_compat_2_12", "migration", "decompress-error-check"),
                ("10.0", "hw_compat_9_2", "migration", "send-switchover-start"),
                ("10.0", "hw_compat_8_2", "migration", "zero-page-detection"),
                ("10.0", "hw_compat_7_2", "migration", "x-preempt-pre-7-2")}  # existence: property test
    marked = {(v, n, e.driver, e.property) for v in VERSIONS for n, es in load(v).compat_lists.items()
              for e in es if e.verified}
    assert marked == covered
    assert all(v in ("7.2", "10.0") for v, *_ in marked)


@pytest.mark.qemu
@pytest.mark.parametrize("version", ["7.2", "10.0"])
def test_capabilities_match_binary(binary, version):
    """Capability names from query-migrate-capabilities, and each rule verified on this
    release gives the recorded answer to migrate-set-capabilities."""
    from conformance.qemu.process import QmpCommandError

    b = binary(version)
    capdata = capabilities()
    with _qemu(b, "pc") as q:
        names = {c["capability"] for c in q.cmd("query-migrate-capabilities")}
        assert names == set(capdata.available(version))
        for name, c in capdata.capabilities.items():
            assert (version in c["verified_present_in"]) == (name in names), name
        for r in capdata.rules:
            outcome = r["verified"].get(version)
            if not outcome:
                continue
            caps = r["when"]["all"]
            try:
                q.cmd("migrate-set-capabilities", capabilities=[{"capability": c, "state": True} for c in caps])
                got = "accepted"
                q.cmd("migrate-set-capabilities", capabilities=[{"capability": c, "state": False} for c in caps])
            except QmpCommandError as e:
                got = "refused"
                assert r["error"] in str(e), (r["id"], str(e))
            assert outcome.startswith(got), (r["id"], got)
            if not r.get("environment"):
                assert (r["error"] in capability_errors(version, caps)) == (got == "refused"), r["id"]
