"""scripts/setup.sh as a new user meets it: each package it installs says why, and the pinned
QEMU 10.0 package has a fallback once the archive has moved on (scripts/qemu10_version.sh,
run here against a stand-in `apt-cache` that lists what an archive might)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).parent.parent / "scripts"
PINNED = "1:10.0.2+ds-2+deb13u1~bpo12+1"


def pick(tmp_path, listed: list[str], pinned: str = PINNED):
    stub = tmp_path / "bin"
    stub.mkdir(exist_ok=True)
    rows = "".join(f" qemu-system-x86 | {v} | http://deb.debian.org/debian suite/main amd64 Packages\n" for v in listed)
    (stub / "rows").write_text(rows)
    apt = stub / "apt-cache"
    apt.write_text(f'#!/bin/sh\n[ "$1 $2" = "madison qemu-system-x86" ] || exit 100\ncat "{stub / "rows"}"\n')
    apt.chmod(0o755)
    env = dict(os.environ, PATH=f"{stub}:{os.environ['PATH']}")
    p = subprocess.run(["bash", str(SCRIPTS / "qemu10_version.sh"), pinned], capture_output=True, text=True,
                       env=env, timeout=30)
    return p.returncode, p.stdout.strip(), p.stderr.strip()


def test_the_pinned_version_while_the_archive_lists_it(tmp_path):
    assert pick(tmp_path, [PINNED, "1:7.2+dfsg-7+deb12u18+b3"]) == (0, PINNED, "")


@pytest.mark.parametrize("listed, chosen", [
    (["1:10.0.3+ds-1~bpo12+1", "1:7.2+dfsg-7+deb12u18+b3"], "1:10.0.3+ds-1~bpo12+1"),
    (["1:10.1.0+ds-1~bpo12+1", "1:10.0.7+ds-1~bpo12+1", "1:10.0.10+ds-1~bpo12+1"], "1:10.0.10+ds-1~bpo12+1"),
])
def test_the_newest_listed_10_0_once_the_pin_is_gone(tmp_path, listed, chosen):
    code, out, err = pick(tmp_path, listed)
    assert code == 0 and out == chosen
    assert err == f"setup: QEMU {PINNED} is no longer in the archive; using {chosen} (the same 10.0 release line)"


def test_no_10_0_at_all_is_one_line_saying_what_to_do(tmp_path):
    code, out, err = pick(tmp_path, ["1:10.1.0+ds-1~bpo12+1", "1:7.2+dfsg-7+deb12u18+b3"])
    assert code == 1 and out == "" and len(err.splitlines()) == 1
    assert "no QEMU 10.0 package" in err and "1:10.1.0+ds-1~bpo12+1" in err and "MIGCONFORM_QEMU10_DEB" in err


def test_setup_uses_the_fallback_and_says_why_each_package_is_installed():
    text = (SCRIPTS / "setup.sh").read_text()
    assert re.search(r'qemu10_version=\$\("\$here/scripts/qemu10_version\.sh" "\$qemu10_version"\)', text)
    installed = re.search(r"^for p in ([^;]+); do", text, re.M).group(1).split()
    reasons = dict(re.findall(r'^\s+\[([\w.+-]+)\]="([^"]+)"', text, re.M))
    assert "chromium" in installed and set(installed) == set(reasons)
    assert "matrix --html" in reasons["chromium"]
    assert 'log "installing $p (${why[$p]})"' in text
    p = subprocess.run(["bash", "-n", str(SCRIPTS / "setup.sh")], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
