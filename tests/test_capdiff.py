"""Capability differential: the compat model against real QEMU 7.2 and 10.0 answering
migrate-set-capabilities / migrate-set-parameters (conformance/tools/capdiff.py, the real side
through conformance/qemu/capsession.py)."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conformance.qemu import CapSession
from conformance.tools.capdiff import (
    BACKGROUND_SNAPSHOT_KERNEL_ERROR,
    CAPS_COMMAND,
    KNOWN_DISCREPANCIES,
    PARAMS_COMMAND,
    ZERO_COPY_ERROR,
    Answer,
    CapSetting,
    Environment,
    Step,
    capability_names,
    check,
    compare,
    environment,
    model_answer,
    normalise_error,
    open_session,
    real_answer,
    run_capdiff,
    same_error,
    setting_strategy,
    settings_upto,
)

VERSIONS = ("7.2", "10.0")
# each example costs about 15 ms of QMP on a reused QEMU: bounded so that even the fuzz
# profile stays well inside the suite's 300 s timeout; ci (150) takes a few seconds
MAX_EXAMPLES = min(settings.default.max_examples, 1500)


# ------------------------------------------------------------------ model only

def test_normalisation():
    assert normalise_error("  Postcopy preempt requires\n postcopy-ram. ") == "Postcopy preempt requires postcopy-ram"
    assert same_error("Parameter 'capability' does not accept value 'compress'",
                      "Parameter 'capability' does not accept value 'compress' (capability removed in 9.1)")
    assert not same_error("Parameter 'capability' does not accept value 'compress'",
                          "Parameter 'capability' does not accept value 'block' (capability removed in 9.1)")
    assert not same_error("Multifd is not compatible with xbzrle", "Multifd is not compatible with compress")
    assert same_error(None, None) and not same_error(None, "x") and not same_error("x", None)


def test_model_answers_verified_facts():
    multifd_postcopy = CapSetting.make(["multifd", "postcopy-ram"])
    assert model_answer("7.2", multifd_postcopy).accepted
    assert model_answer("10.0", multifd_postcopy).errors == ["Postcopy is not yet compatible with multifd"]
    # the environment decides rules the data marks as host/build dependent
    dl = CapSetting.make(["dirty-limit"])
    assert model_answer("10.0", dl, Environment(kvm_dirty_ring=False)).errors == [
        "dirty-limit requires KVM with accelerator property 'dirty-ring-size' set"]
    assert model_answer("10.0", dl, Environment(kvm_dirty_ring=True)).accepted
    bs = CapSetting.make(["background-snapshot", "xbzrle"])
    assert model_answer("10.0", bs).errors == ["Background-snapshot is not compatible with xbzrle"]
    assert model_answer("10.0", bs, Environment(uffd_write_protect=False)).errors == [BACKGROUND_SNAPSHOT_KERNEL_ERROR]
    assert model_answer("10.0", CapSetting.make(["x-colo"]), Environment(replication=False)).errors == [
        "QEMU compiled without replication module can't enable COLO"]


def test_parameter_model():
    m = model_answer("7.2", CapSetting.make((), {"zero-page-detection": "legacy"}))
    assert m.steps == (Step(PARAMS_COMMAND, "Parameter 'zero-page-detection' is unexpected"),)
    assert model_answer("10.0", CapSetting.make((), {"zero-page-detection": "legacy"})).accepted
    assert model_answer("10.0", CapSetting.make((), {"multifd-channels": 0})).errors == [
        "Parameter 'multifd_channels' expects a value between 1 and 255"]
    two_bad = CapSetting.make((), {"multifd-channels": 256, "multifd-compression": "lz4"})
    assert model_answer("10.0", two_bad).errors == [
        "Parameter 'multifd-channels' expects uint8_t"]  # the first member in declaration order
    # zero-copy-send reads the compression in force, in either order of the two commands
    zc = ["multifd", "zero-copy-send"]
    for first in (True, False):
        ans = model_answer("7.2", CapSetting.make(zc, {"multifd-compression": "zlib"}, parameters_first=first))
        assert ans.errors == [ZERO_COPY_ERROR] and len(ans.steps) == 2
    # build-optional compression methods
    assert model_answer("10.0", CapSetting.make((), {"multifd-compression": "qpl"}),
                        Environment(compression_methods=frozenset({"zlib", "qpl"}))).accepted
    assert not model_answer("7.2", CapSetting.make((), {"multifd-compression": "qpl"}),
                            Environment(compression_methods=frozenset({"zlib", "qpl"}))).accepted


def test_setting_steps_and_description():
    s = CapSetting.make(["xbzrle", "multifd"], {"multifd-channels": 4}, parameters_first=True)
    assert [c for c, _ in s.steps()] == [PARAMS_COMMAND, CAPS_COMMAND]
    assert s.steps()[1][1]["capabilities"][0] == {"capability": "multifd", "state": True}  # sorted
    assert s.describe() == "parameters {multifd-channels=4} then capabilities {multifd, xbzrle}"
    assert CapSetting.make().steps() == []


@settings(max_examples=50, deadline=None)
@given(st.sampled_from(VERSIONS).flatmap(lambda v: st.tuples(st.just(v), setting_strategy(v))))
def test_model_is_total(vs):
    """The model answers every generated setting with one step per command sent."""
    version, setting = vs
    ans = model_answer(version, setting)
    assert [s.command for s in ans.steps] == [c for c, _ in setting.steps()]


def test_known_discrepancies_are_consistent():
    for d in KNOWN_DISCREPANCIES:
        for v in d.versions:
            assert model_answer(v, d.example).errors[:1] == [d.model], d.id
            fixed = model_answer(v, d.example, patches=d.patches)
            assert fixed.errors[:1] == [d.real], d.id
            mm = compare(v, d.example, Answer((Step(CAPS_COMMAND, d.real),)), model_answer(v, d.example))
            assert mm is not None and mm.known is d


def test_sweep_is_deterministic():
    a = list(settings_upto("10.0", 2))
    assert a == list(settings_upto("10.0", 2))
    n = len(capability_names("10.0"))
    assert sum(1 for s in a if not s.parameters and all(c in capability_names("10.0") for c in s.capabilities)) \
        == n + n * (n - 1) // 2


# ------------------------------------------------------------------ real QEMU

@pytest.fixture(scope="module")
def cap_session(qemu):
    """cap_session("10.0") -> a started CapSession, one QEMU per version for the module."""
    sessions: dict[str, CapSession] = {}

    def get(version: str) -> CapSession:
        if version not in sessions:
            s = open_session(qemu(version))
            s.start()
            sessions[version] = s
        return sessions[version]

    yield get
    for s in sessions.values():
        s.close()


@pytest.mark.qemu
@pytest.mark.parametrize("version", VERSIONS)
@settings(max_examples=MAX_EXAMPLES, deadline=None)
@given(data=st.data())
def test_model_agrees_with_real_qemu(cap_session, version, data):
    """Accept/refuse and the error text of each command agree (see capdiff's normalisation);
    a disagreement explained by a recorded model error (KNOWN_DISCREPANCIES: the model with the
    proposed data fix gives the real answer) passes here and is an xfail below."""
    session = cap_session(version)
    setting = data.draw(setting_strategy(version), label="setting")
    real, model, mismatch = check(session, setting)
    assert not any("QEMU failed" in (e or "") for e in real.errors), f"{setting.describe()}: {real}"
    if mismatch is not None and mismatch.known is None:
        pytest.fail(f"model and real QEMU disagree\n{mismatch}\n  environment: {environment(session.host)}", pytrace=False)


# A model error found here goes into capdiff.KNOWN_DISCREPANCIES with its data fix, and gets a
# strict xfail against the real binary until conformance/rules/compat is fixed (none open now: the
# first, zero-copy-send-vs-xbzrle ending at 8.1, was fixed in the data).


@pytest.mark.qemu
@pytest.mark.parametrize("version", VERSIONS)
def test_session_reuse_resets_and_restarts(cap_session, version):
    s = cap_session(version)
    assert all(not on for on in s.initial_caps.values())
    assert set(s.names) == set(capability_names(version))  # the names the model draws from
    before = s.restarts
    a = real_answer(s, CapSetting.make(["multifd", "postcopy-ram"], {"multifd-channels": 8}))
    b = real_answer(s, CapSetting.make(["multifd", "postcopy-ram"], {"multifd-channels": 8}))
    assert a == b  # the first setting left nothing behind
    s.reset()
    caps = {c["capability"]: c["state"] for c in s.q.cmd("query-migrate-capabilities")}
    assert caps == s.initial_caps
    assert s.q.cmd("query-migrate-parameters")["multifd-channels"] == s.initial_params["multifd-channels"]
    assert s.restarts == before
    s.q.terminate()  # a dead process is replaced, and the answer is unchanged
    assert real_answer(s, CapSetting.make(["multifd", "postcopy-ram"], {"multifd-channels": 8})) == a
    assert s.restarts == before + 1


@pytest.mark.qemu
def test_run_capdiff_sweep(qemu):
    """The CLI's deterministic sweep (all single capabilities, foreign names, parameter values)."""
    t0 = time.monotonic()
    rep = run_capdiff(qemu("10.0"), settings_upto("10.0", 1))
    assert rep.settings > 40 and rep.unexplained == [], "\n".join(map(str, rep.unexplained))
    assert time.monotonic() - t0 < 30


@pytest.mark.qemu
def test_cli_functions(qemu, capsys):
    import argparse
    import json

    from conformance.tools.capdiff import add_capdiff_parser, cmd_capdiff

    parser = argparse.ArgumentParser(prog="migconform")
    add_capdiff_parser(parser.add_subparsers(dest="command", required=True))
    b = qemu("10.0")
    args = parser.parse_args(["capdiff", "--qemu", f"10.0={b.path}", "--version", "10.0", "--max-caps", "1", "--json"])
    assert args.func is cmd_capdiff and cmd_capdiff(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["reports"][0]["version"] == "10.0" and doc["reports"][0]["mismatches"] == []
    args = parser.parse_args(["capdiff", "--version", "6.0"])
    assert cmd_capdiff(args) == 2 and "no compat data" in capsys.readouterr().err
