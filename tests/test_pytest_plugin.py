"""The migconform pytest plugin (conformance/pytest_plugin.py) run on temporary projects with
pytester, in subprocesses that load only this plugin (as the pytest11 entry point would)."""

from __future__ import annotations

import os
import shutil
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.test_cli import BAD, GOOD

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
MULTIFD = ROOT / "tests" / "data" / "multifd"


@pytest.fixture
def run(pytester, monkeypatch):
    """run(*args, autoload=False, extra_path=()) -> RunResult of a pytest subprocess in the
    temporary project with the plugin loaded by -p (other plugins off unless autoload)."""
    def go(*args, autoload: bool = False, plugin: bool = True, extra_path=(), env=None):
        paths = [str(ROOT), *map(str, extra_path), os.environ.get("PYTHONPATH", "")]
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))
        for k in ("HYPOTHESIS_PROFILE", "CI", "PYTEST_ADDOPTS"):
            monkeypatch.delenv(k, raising=False)
        for k, v in (env or {}).items():
            monkeypatch.setenv(k, v)
        if autoload:
            monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
            base = ["-p", "no:cacheprovider", "-p", "no:randomly"]
        else:
            monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
            base = ["-p", "no:cacheprovider"] + (["-p", "conformance.pytest_plugin"] if plugin else [])
        return pytester.runpytest_subprocess(*base, *args, timeout=120)
    return go


@pytest.fixture
def captures(pytester):
    """A directory with a conforming stream, a corrupted one, a multifd capture directory
    (real QEMU 10.0 capture, compressed, with a manifest) and a note that is not a stream."""
    d = pytester.path / "captures"
    d.mkdir()
    (d / "good.mig").write_bytes(GOOD)
    (d / "corrupt.mig").write_bytes(BAD)
    (d / "README.txt").write_text("notes, not a stream\n")
    mf = d / "multifd-10.0"
    mf.mkdir()
    names = [f"qemu100-i440fx-10.0.{part}.bin.xz" for part in ("main", "multifd0", "multifd1")]
    for n in names:
        shutil.copy(MULTIFD / n, mf / n)
    (mf / "manifest.json").write_text('{"main": "%s", "channels": ["%s", "%s"]}' % tuple(names))
    return d


def test_captures_become_test_items(run, captures, pytester):
    r = run(f"--captures={captures}", "-rA", "--junitxml", str(pytester.path / "junit.xml"))
    r.assert_outcomes(passed=2, failed=1)
    out = r.stdout.str()
    assert "migconform::captures::corrupt.mig[10.0]" in out and "migconform::captures::good.mig[10.0]" in out
    assert "migconform::captures::multifd-10.0[10.0]" in out
    # the failure names the violation, without a traceback
    assert "corrupt.mig: 1 violation as a QEMU 10.0 destination" in out
    assert "ram-offset-out-of-range" in out and "Illegal RAM offset 10000" in out
    assert "Traceback" not in out and "README" not in out
    cases = {c.get("name"): c for c in ET.parse(pytester.path / "junit.xml").iter("testcase")}
    assert set(cases) == {"corrupt.mig[10.0]", "good.mig[10.0]", "multifd-10.0[10.0]"}
    assert {c.get("classname") for c in cases.values()} == {"migconform.captures"}
    failure = cases["corrupt.mig[10.0]"].find("failure")
    assert failure is not None and "ram-offset-out-of-range" in failure.get("message")
    assert cases["good.mig[10.0]"].find("failure") is None


def test_captures_targets_markers_and_selection(run, captures):
    r = run(f"--captures={captures / 'good.mig'}", "--captures-target=7.2", "--captures-target=10.0", "-v")
    r.assert_outcomes(passed=2)
    r.stdout.fnmatch_lines(["*good.mig[[]7.2[]] PASSED*", "*good.mig[[]10.0[]] PASSED*"])
    # -m / -k apply to capture items (the plugin adds them before deselection)
    run(f"--captures={captures}", "-m", "not capture").assert_outcomes()
    run(f"--captures={captures}", "-k", "good").assert_outcomes(passed=1)
    r = run(f"--captures={captures / 'nowhere'}")
    assert r.ret == pytest.ExitCode.USAGE_ERROR and "--captures" in r.stderr.str()
    r = run(f"--captures={captures}", "--captures-target", "6.0")
    assert r.ret == pytest.ExitCode.USAGE_ERROR and "not modelled" in r.stderr.str()


def test_markers_are_registered(run, pytester):
    pytester.makepyfile(test_marks="""
        import pytest

        @pytest.mark.qemu
        def test_q(): pass

        @pytest.mark.matrix
        def test_m(): pass

        @pytest.mark.slow
        def test_s(): pass
    """)
    r = run("--strict-markers", "-m", "not slow")
    r.assert_outcomes(passed=2, deselected=1)
    r = run("--markers")
    r.stdout.fnmatch_lines(["@pytest.mark.qemu:*", "@pytest.mark.matrix:*", "@pytest.mark.slow:*"])


PROFILE_TEST = """
    from hypothesis import settings

    def test_profile():
        print("PROFILE", settings.get_current_profile_name(), settings.default.max_examples)
"""


@pytest.mark.parametrize("args, env, expect", [
    (("--migconform-profile", "fuzz"), {}, "PROFILE fuzz 20000"),
    (("--migconform-profile", "quick"), {}, "PROFILE quick 30"),
    ((), {"HYPOTHESIS_PROFILE": "ci"}, "PROFILE ci 150"),
    ((), {}, "PROFILE default 100"),  # nothing asked: the project's own choice stands
])
def test_profiles(run, pytester, args, env, expect):
    pytester.makepyfile(test_prof=PROFILE_TEST)
    r = run("-s", *args, env=env)
    r.assert_outcomes(passed=1)
    assert expect in r.stdout.str()


def test_profile_option_is_checked(run, pytester):
    pytester.makepyfile(test_prof=PROFILE_TEST)
    r = run("--migconform-profile", "huge")
    assert r.ret == pytest.ExitCode.USAGE_ERROR and "invalid choice" in r.stderr.str()


def test_qemu_option_and_fixtures(run, pytester):
    pytester.makepyfile(test_fix="""
        def test_pairs(qemu_pairs):
            assert qemu_pairs == {"9.8": "/nonexistent/qemu", "9.9": "/also/not/here"}
    """)
    r = run("--qemu", "9.8=/nonexistent/qemu", "--qemu", "9.9=/also/not/here", "-k", "pairs")
    r.assert_outcomes(passed=1)
    out = run("--fixtures").stdout.str()
    for name in ("qemu_pairs", "qemu_binaries", "qemu ", "capture "):
        assert f"{name.strip()} [session scope]" in out, name
    pytester.makepyfile(test_missing="""
        def test_absent(qemu):
            qemu("9.7")
    """)
    r = run("test_missing.py")
    r.assert_outcomes(skipped=1)
    r = run("test_missing.py", "-rs", env={"CI": "true"})
    r.assert_outcomes(failed=1)
    assert "QEMU 9.7 not found" in r.stdout.str() and "CI is set" in r.stdout.str()
    pytester.makepyfile(test_bad="""
        def test_bad(qemu_pairs): pass
    """)
    r = run("test_bad.py", "--qemu", "no-equals-sign")
    assert r.ret != 0 and "--qemu takes VERSION=PATH" in r.stdout.str() + r.stderr.str()


def test_entry_point_and_suite_shim_together(run, pytester, tmp_path):
    """As installed (pytest11 entry point "migconform") and loaded again by a project's
    conftest through tests.qemu_fixtures: one registration, options added once. Then the
    shim alone (no entry point), as this suite runs before the entry point is installed."""
    site = tmp_path / "site"
    dist = site / "migconform_ep_check-0.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: migconform-ep-check\nVersion: 0.0\n")
    (dist / "entry_points.txt").write_text("[pytest11]\nmigconform = conformance.pytest_plugin\n")
    pytester.makeconftest('pytest_plugins = ["tests.qemu_fixtures"]\n')
    pytester.makepyfile(test_both="""
        import conformance.pytest_plugin as plugin

        def test_once(request, qemu_pairs):
            pm = request.config.pluginmanager
            assert pm.is_registered(plugin)
            assert [n for n, p in pm.list_name_plugin() if p is plugin] == ["migconform"]
            assert qemu_pairs == {"7.2": "/x"}
    """)
    r = run("--qemu", "7.2=/x", "-p", "no:xdist", autoload=True, extra_path=[site])
    r.assert_outcomes(passed=1)
    # and the suite's shim alone (no entry point) still provides everything
    r = run("--qemu", "7.2=/x", plugin=False, extra_path=[site])
    r.assert_outcomes(passed=1)


def test_plugin_loaded_in_this_suite(pytestconfig):
    """This suite loads the plugin (through tests/conftest.py and tests.qemu_fixtures)."""
    import conformance.pytest_plugin as plugin

    assert pytestconfig.pluginmanager.is_registered(plugin)
    assert pytestconfig.getoption("captures") == [] and sys.modules["tests.qemu_fixtures"]


def _rejected_by_destination_layout() -> bytes:
    """A real 10.0 stream (pc-i440fx-7.2) whose fdc claims three floppies: its own
    description still matches the body, but the destination's `uint8 equal` check fails."""
    import lzma

    from tests.test_dest_vmsd import _mutate, _offset_of, _trailer

    raw = lzma.decompress((MULTIFD / "qemu100-i440fx-7.2.main.bin.xz").read_bytes())
    import json

    fdc = next(d for d in json.loads(raw[_trailer(raw) + 5:])["devices"] if d["name"] == "fdc")
    at = _offset_of(fdc, "state", "num_floppies")
    return _mutate(raw, "fdc", lambda b: b[:at] + b"\x03" + b[at + 1:])


def test_capture_items_judge_as_check_does(run, pytester):
    """The plugin uses `check`'s defaults (built-in destination tables and layouts): a stream
    `check` rejects fails as a pytest item, with the same violation."""
    from conformance.cli import main

    d = pytester.path / "layout"
    d.mkdir()
    (d / "fdc3.mig").write_bytes(_rejected_by_destination_layout())
    assert main(["check", str(d / "fdc3.mig"), "--json"]) == 1
    r = run(f"--captures={d}", "-rA")
    r.assert_outcomes(failed=1)
    assert "device-field-equal-mismatch" in r.stdout.str() and "2 != 3" in r.stdout.str()
