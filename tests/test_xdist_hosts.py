"""The matrix spread over two hosts by pytest-xdist: this one (popen) and a second "host"
reached over ssh: a loopback sshd started by the test, with a key pair of its own made for
it. The remote worker runs the installed project with //python=, as a real second host runs
its own set-up; its //chdir= is a scratch folder (xdist copies pytest there) linking the tests. The cells both hosts ran
come back as one --matrix-json/--matrix-html report, and as JUnit XML."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def loopback_host(tmp_path):
    """An ssh config naming host 'migconform-loopback': an sshd of the test's own on 127.0.0.1."""
    if not os.path.exists(SSHD):
        pytest.fail("sshd not found: scripts/setup.sh installs openssh-server")
    d = tmp_path / "ssh"
    d.mkdir(mode=0o700)
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    os.chmod(d / "authorized_keys", 0o600)
    port = _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        f"PidFile {d / 'sshd.pid'}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "StrictModes no\nPermitRootLogin prohibit-password\nAcceptEnv LANG\n")
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.PIPE, text=True)
    (d / "config").write_text(
        f"Host migconform-loopback\n  HostName 127.0.0.1\n  Port {port}\n  User {os.environ.get('USER', 'root')}\n"
        f"  IdentityFile {d / 'client_key'}\n  IdentitiesOnly yes\n  StrictHostKeyChecking no\n"
        "  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n  BatchMode yes\n")
    try:
        deadline = time.monotonic() + 20
        while True:
            r = subprocess.run(["ssh", "-F", str(d / "config"), "migconform-loopback", "echo", "ok"],
                               capture_output=True, text=True, timeout=20)
            if r.stdout.strip() == "ok":
                break
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.terminate()
                pytest.fail(f"loopback sshd did not answer: {r.stderr.strip()[:300]}")
            time.sleep(0.3)
        yield d / "config"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.qemu
@pytest.mark.slow
def test_matrix_cells_spread_over_two_hosts_merge_into_one_report(loopback_host, tmp_path):
    py = sys.executable
    out = tmp_path / "out"
    out.mkdir()
    # xdist copies pytest itself (rsync) into a non-popen worker's folder: that folder must be
    # a scratch one, never the project (a copied pytest there would shadow the installed one).
    # The "host" sees the project's tests and settings there (links), its code is installed.
    remote = tmp_path / "remote-host"
    remote.mkdir()
    for name in ("tests", "pyproject.toml"):
        (remote / name).symlink_to(ROOT / name)
    # --pyargs: a module name, which each worker finds in its own copy (a path would have to
    # lie under an rsync root)
    argv = [py, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--pyargs", "tests.test_matrix",
            "-k", "test_cell and pc-q35-7.2/none/none",  # the 4 directions of one machine, device set, capability set
            "--dist", "load", "--tx", f"popen//python={py}",
            "--tx", f"ssh=-F {loopback_host} migconform-loopback//python={py}//chdir={remote}",
            "--matrix-json", str(out / "m.json"), "--matrix-html", str(out / "m.html"),
            "--junitxml", str(out / "m.xml"), f"--basetemp={tmp_path / 'bt'}"]  # PATH, not a separate arg: xdist would want it under an rsync root
    t0 = time.monotonic()
    r = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    seconds = time.monotonic() - t0
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[:3000]
    data = json.loads((out / "m.json").read_text())
    cells = data["cells"]
    assert data["summary"]["cells"] == 4 and data["summary"]["pass"] == 4, data["summary"]
    assert {c["id"].split("/")[0] for c in cells} == {"7.2->7.2", "7.2->10.0", "10.0->7.2", "10.0->10.0"}
    # both hosts ran cells: one worker came in over ssh, the other did not
    assert {c["over_ssh"] for c in cells} == {True, False}, [(c["id"], c["worker"], c["over_ssh"]) for c in cells]
    assert data["grid"]["directions"] == ["7.2->7.2", "7.2->10.0", "10.0->7.2", "10.0->10.0"]
    assert "<table" in (out / "m.html").read_text()
    assert not (ROOT / "_pytest").exists() and not (ROOT / "pytest").exists()
    assert len(re.findall(r"<testcase ", (out / "m.xml").read_text())) == 4
    print(f"2-host xdist run of 4 cells: {seconds:.1f} s")
