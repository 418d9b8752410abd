"""Campaigns on several machines share hypothesis's example database through Redis: a real
redis-server on loopback and worker processes that each see what the others found.

The workers judge with a planted oracle (tests/fuzz_worker.py) so that which inputs are
findings is known; everything else — the campaign, hypothesis's Redis database, shrinking,
replay from the database, the findings store — is the product's own code.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def redis_url(tmp_path):
    server = shutil.which("redis-server")
    if server is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is missing (scripts/setup.sh installs it)")
        pytest.skip("redis-server is not installed (scripts/setup.sh installs it)")
    import redis

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("redis-server did not start")
                time.sleep(0.05)
        yield url
    finally:
        proc.kill()
        proc.wait()


def worker(url: str, findings: Path, plant: str, seconds: float, *, corpus_only=False,
           key="shared") -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tests.fuzz_worker", "--redis", url, "--key", key, "--plant", plant,
           "--findings", str(findings), "--seconds", str(seconds)] + (["--corpus-only"] if corpus_only else [])
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    return json.loads(out.strip().splitlines()[-1])


def wait_for_a_finding(url: str, findings: Path, timeout: float = 60) -> None:
    """Until the worker has saved a finding (hypothesis has put it in the database by then)."""
    deadline = time.monotonic() + timeout
    while not any(findings.glob("finding-*.json")):
        assert time.monotonic() < deadline, "the worker found nothing"
        time.sleep(0.1)


def test_two_workers_see_each_others_findings_through_redis(redis_url, tmp_path):
    # A's build fails on shorter inputs; B's on shorter and longer ones. They run at the same
    # time, each with its own findings folder; the database is the only thing they share.
    a = worker(redis_url, tmp_path / "a", "shorter", 8)
    wait_for_a_finding(redis_url, tmp_path / "a")  # B starts with A's finding in the database
    b = worker(redis_url, tmp_path / "b", "shorter,longer", 6)
    ra, rb = result(a), result(b)
    assert set(ra["findings"]) == {"shorter"}
    assert set(rb["findings"]) == {"shorter", "longer"}
    # B's very first execution was A's reproducer, replayed from the database
    assert rb["first_hit"]["shorter"] == 1

    # A third worker starts with an empty findings folder and generates nothing (corpus only):
    # whatever it finds came from the database, and it finds both A's and B's findings
    rc = result(worker(redis_url, tmp_path / "c", "shorter,longer", 30, corpus_only=True))
    assert set(rc["findings"]) == {"shorter", "longer"}
    assert rc["first_hit"]["shorter"] <= rc["execs"] <= 20  # the database's entries, not a campaign


def test_a_corpus_only_run_leaves_the_shared_database_as_it_was(redis_url, tmp_path):
    import redis

    result(worker(redis_url, tmp_path / "a", "shorter", 4, key="k"))
    r = redis.Redis.from_url(redis_url)
    before = {k: r.smembers(k) for k in r.keys("*")}
    assert before  # the finding is stored
    # a build without the bug replays the corpus: nothing fires, and nothing is pruned
    # (hypothesis may extend a replayed entry with fresh choices: no planted bug at all here)
    rc = result(worker(redis_url, tmp_path / "c", "never", 30, corpus_only=True, key="k"))
    assert rc["findings"] == {} and 0 < rc["execs"] <= 10
    assert {k: r.smembers(k) for k in r.keys("*")} == before


def test_shared_corpus_keeps_what_it_read_and_prunes_what_it_wrote():
    from hypothesis.database import InMemoryExampleDatabase

    from conformance.tools.fuzz.campaign import SharedCorpus

    inner = InMemoryExampleDatabase()
    inner.save(b"k", b"from another worker")
    db = SharedCorpus(inner)
    assert list(db.fetch(b"k")) == [b"from another worker"]
    db.save(b"k", b"a shrink step of ours")
    db.delete(b"k", b"from another worker")  # passes on this build: kept for the others
    db.delete(b"k", b"a shrink step of ours")  # superseded by a smaller one: gone
    db.move(b"k", b"k2", b"from another worker")  # copied, not taken away
    assert set(inner.fetch(b"k")) == {b"from another worker"}
    assert set(inner.fetch(b"k2")) == {b"from another worker"}
