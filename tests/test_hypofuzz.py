"""The fuzz-marked properties run under HypoFuzz (a dependency, not vendored): started as a
user would start it, it must execute both properties many times."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_hypofuzz_runs_the_fuzz_properties(tmp_path):
    import hypofuzz  # noqa: F401  (a dev dependency: its absence is a failure, not a skip)

    tally = tmp_path / "tally"
    cmd = [str(Path(sys.executable).with_name("hypothesis")), "fuzz", "--no-dashboard", "-n", "1", "--",
           "-p", "no:cacheprovider", "-m", "fuzz", "tests/test_fuzz_properties.py"]
    # a campaign's profile, also where CI=true would load the derandomized "ci" one
    env = {**os.environ, "HYPOTHESIS_PROFILE": "fuzz", "MIGCONFORM_FUZZ_TALLY": str(tally),
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    counts: collections.Counter = collections.Counter()
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and proc.poll() is None:
            if tally.exists():
                counts = collections.Counter(tally.read_text().split())
                if min(counts["loader"], counts["reader"]) >= 200:
                    break
            time.sleep(1)
        output = b""
        if proc.poll() is not None:
            output = proc.stdout.read()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:  # it ended by itself (HypoFuzz exits once every test has failed)
            pass
        proc.wait()
    assert counts["loader"] >= 200 and counts["reader"] >= 200, (counts, output[-3000:])
