"""The registry of modelled versions (conformance/versions.py) is the only list of them:
every other list follows it, and no code names a modelled version by hand."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conformance.versions import FACTS, MODELLED, NEWEST, VERSIONS, release, version_key

ROOT = Path(__file__).resolve().parent.parent

# String constants equal to a modelled version that are facts of their own, not lists of
# the modelled versions: (file, value).
ALLOWED = {
    ("wireformat/multifd.py", "7.2"),  # LAYOUT_V72: the multifd packet layout of 7.2 … 8.2, a wire format
}


def test_version_key_orders_as_numbers():
    assert sorted(["10.0", "9.2", "10.0.2", "7.2", "10.1", "8.0"], key=version_key) == [
        "7.2", "8.0", "9.2", "10.0", "10.0.2", "10.1"]
    assert version_key("pc-i440fx-4.0.1".rsplit("-", 1)[1]) == (4, 0, 1)
    with pytest.raises(ValueError):
        version_key("latest")
    assert release("7.2.22") == "7.2" and release("10.0") == "10.0"


def test_registry_is_sorted_and_complete():
    assert VERSIONS == tuple(sorted((m.version for m in MODELLED), key=version_key))
    assert NEWEST == VERSIONS[-1] and set(FACTS) == set(VERSIONS)
    for m in MODELLED:  # every fact is given for every row (keyword-only, no defaults)
        with pytest.raises(TypeError):
            type(m)(version=m.version)


def _modelled_literals():
    versions = set(VERSIONS)
    for top in ("conformance", "strategies", "wireformat"):
        for f in sorted((ROOT / top).rglob("*.py")):
            rel = f.relative_to(ROOT).as_posix()
            if rel == "conformance/versions.py":
                continue
            for node in ast.walk(ast.parse(f.read_text(), rel)):
                if isinstance(node, ast.Constant) and node.value in versions and (rel, node.value) not in ALLOWED:
                    yield f"{rel}:{node.lineno}: {node.value!r}"


def test_no_modelled_version_is_named_outside_the_registry():
    """A "7.2" or "10.0" in code is a list or a condition that a new version would not join:
    derive it from conformance.versions (a fact of the version belongs in its row)."""
    assert list(_modelled_literals()) == []


# A fresh interpreter in which the registry has one more row before anything reads it.
EXTRA_VERSION = r"""
import dataclasses, io, json, contextlib, sys

import conformance.versions as V

extra = dataclasses.replace(V.FACTS["10.0"], version="9.2", mig_cmd_max=11)
V.MODELLED = V.MODELLED + (extra,)
V.FACTS, V.VERSIONS, V.NEWEST = V._index(V.MODELLED)

from hypothesis import find

from conformance import pytest_plugin
from conformance.cli import build_parser, main
from conformance.rules import migration_states as ms
from conformance.rules.profile import PROFILES
from conformance.tools import demo, matrix
from strategies import mutations
from strategies.streams import precopy_streams

check = next(a for a in build_parser("check")._subparsers._group_actions[0].choices["check"]._actions
             if "--target" in a.option_strings)
out = io.StringIO()
with contextlib.redirect_stdout(out):
    code = main(["check", sys.argv[1], "--target", "9.2", "--json"])
print(json.dumps({
    "versions": V.VERSIONS,
    "profiles": list(PROFILES),
    "profile_machines": "pc-q35-9.2" in PROFILES["9.2"].machine_types,
    "state_tables": sorted(v for _, v in ms.TABLES),
    "state_versions": ms.VERSIONS,
    "recovery": ms.predict_sequence(ms.SOURCE, "9.2.3", "postcopy-recovery"),
    "plugin": pytest_plugin.QEMU_VERSIONS,
    "matrix": matrix.DEFAULT_VERSIONS,
    "demo": demo.VERSIONS,
    "target_help": check.help,
    "check": [code, json.loads(out.getvalue())["target"]],
    "mutations": sorted(mutations.ALL_VERSIONS),
    "switchover_start": sorted(next(m for m in mutations.MUTATIONS if m.name == "switchover-start").accepted_by),
    "stream_targets": sorted(find(precopy_streams(), lambda g: True).targets),
}))
"""


def test_a_new_row_reaches_every_list(tmp_path):
    from tests.test_cli import GOOD

    stream = tmp_path / "good.mig"
    stream.write_bytes(GOOD)
    p = subprocess.run([sys.executable, "-c", EXTRA_VERSION, str(stream)], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    three = ["7.2", "9.2", "10.0"]
    assert got["versions"] == got["profiles"] == got["state_versions"] == got["plugin"] == three
    assert got["matrix"] == got["demo"] == three
    assert got["profile_machines"] and got["state_tables"] == sorted(three * 2)
    # 9.2 took 10.0's MigrationStatus facts: its recovery passes postcopy-recover-setup
    assert "postcopy-recover-setup" in got["recovery"]
    assert "7.2, 9.2, 10.0; default 10.0" in got["target_help"]
    assert got["check"] == [0, "9.2"]
    assert got["mutations"] == sorted(three) and got["switchover_start"] == ["10.0"]
    assert got["stream_targets"] == sorted(three)
