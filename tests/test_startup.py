"""Start-up cost: what `migconform --help` and `check` of a small real stream import, counted
in a fresh interpreter. A command imports only what it uses (the COMMANDS table of
conformance/cli); these budgets fail the run when an import at module level drags in more
(construct, the loader, compat data, decompressors, the manifest schema, qemu.qmp …).

Measured when set (modules beyond the interpreter's own start-up, ~68 here with site and the
editable install's finder): --help 19, check 106 (134 before: construct is no longer imported
by a check that meets only what the reader decodes by hand — configuration, section headers,
commands, MEM_SIZE and page runs — and the package data is read through Path(__file__), not
importlib.resources; earlier 130 → 128: zstandard and the manifest schema no longer imported
for a plain file, compat data no longer parsed at import). `python -X importtime -m conformance.cli check F`
shows who pays for what; benchmarks/bench_check.py times it against `python -c pass`.
"""

import lzma
import subprocess
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data" / "multifd"

BUDGET = {"--help": 22, "check": 110}

_COUNT = ("import contextlib, io, sys\n"
          "base = set(sys.modules)\n"
          "from conformance.cli import main\n"
          "with contextlib.redirect_stdout(io.StringIO()):\n"
          "    try:\n        rc = main(sys.argv[1:])\n    except SystemExit as e:\n        rc = e.code\n"
          "print(rc)\n"
          "print('\\n'.join(sorted(set(sys.modules) - base)))")


def imported(*argv: str) -> tuple[int, list[str]]:
    p = subprocess.run([sys.executable, "-c", _COUNT, *argv], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    rc, *mods = p.stdout.split()
    return int(rc), mods


@pytest.fixture(scope="module")
def small_stream(tmp_path_factory):
    """A real QEMU 10.0 main stream (110 KB), decompressed: check reads a plain file."""
    path = tmp_path_factory.mktemp("startup") / "main.bin"
    path.write_bytes(lzma.decompress((DATA / "qemu100-i440fx-10.0.main.bin.xz").read_bytes()))
    return path


def test_help_imports_within_budget():
    rc, mods = imported("--help")
    assert rc == 0
    assert len(mods) <= BUDGET["--help"], f"--help imports {len(mods)} modules (budget {BUDGET['--help']}): {mods}"
    assert not [m for m in mods if m.startswith(("construct", "wireformat", "conformance.rules", "conformance.check"))]


def test_check_imports_within_budget(small_stream):
    rc, mods = imported("check", str(small_stream))
    assert rc in (0, 1)  # a verdict was reached: the stream was read through
    assert len(mods) <= BUDGET["check"], f"check imports {len(mods)} modules (budget {BUDGET['check']}): {mods}"
    # what a plain file never needs (lzma and bz2 still come with shutil, which argparse's help
    # formatter imports); construct: the reader decodes a real stream's records by hand
    unwanted = ("zstandard", "conformance.check.manifest", "conformance.qemu", "conformance.tools",
                "hypothesis", "asyncio", "qemu", "construct")
    assert not [m for m in mods if m.split(".")[0] in unwanted or m.startswith(unwanted)]


def test_capture_dir_names_the_manifest_file_as_the_schema_does():
    from conformance.check import capture_dir, manifest

    assert capture_dir.MANIFEST == manifest.FILE
