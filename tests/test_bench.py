"""Benchmarks (pytest-benchmark; run with `-m bench -p no:xdist`).

The baseline is reading the same file to nowhere in the same run, so the numbers say how
close the checker comes to the disk's (page cache's) speed on this machine. The 2 GiB
real-QEMU benchmark of the issue is benchmarks/bench_check.py.
"""

import random

import pytest

from conformance.check.pipeline import check_stream
from wireformat import ram
from wireformat.records import RamBlockInfo, RamRecord

pytestmark = pytest.mark.bench
PAGES = 64 * 1024  # 256 MiB of random pages


@pytest.fixture(scope="module")
def random_stream(tmp_path_factory):
    rnd = random.Random(1)
    path = tmp_path_factory.mktemp("bench") / "random.mig"
    size = PAGES * 4096
    with open(path, "wb") as f:
        f.write(b"QEVM\x00\x00\x00\x03\x07\x00\x00\x00\x0dpc-i440fx-7.2")
        f.write(b"\x01\x00\x00\x00\x02\x03ram\x00\x00\x00\x00\x00\x00\x00\x04")
        f.write(ram.build_record(RamRecord(addr=size, flags=4, blocks=[RamBlockInfo(name="pc.ram", used_length=size)])))
        f.write((0x10).to_bytes(8, "big") + b"\x7e\x00\x00\x00\x02")
        f.write(b"\x02\x00\x00\x00\x02")
        chunk = rnd.randbytes(4096 * 256)
        for i in range(PAGES):
            page = chunk[(i % 256) * 4096 : (i % 256 + 1) * 4096]
            if i == 0:
                f.write(ram.build_record(RamRecord(addr=0, flags=8, block="pc.ram", data=page)))
            else:
                f.write((i * 4096 | 0x28).to_bytes(8, "big") + page)
        f.write((0x10).to_bytes(8, "big") + b"\x7e\x00\x00\x00\x02\x00")
    return path


def _read_to_nowhere(path):
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(1 << 20)
        while f.readinto(buf):
            pass


def test_bench_baseline_read(benchmark, random_stream):
    benchmark.pedantic(_read_to_nowhere, args=(random_stream,), rounds=5, warmup_rounds=1)


def test_bench_check(benchmark, random_stream):
    def run():
        with open(random_stream, "rb", buffering=0) as f:
            return check_stream(f)

    rep = benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    assert [v.code for v in rep.violations] == ["missing-vmdescription"]
    assert rep.stats["ram_blocks"]["pc.ram"]["page"] == PAGES


def test_bench_check_streaming_window(benchmark, random_stream, monkeypatch):
    """The same check through the streaming window (what a pipe gets): the mapped reading's
    gain is the difference to test_bench_check."""
    from wireformat import window

    monkeypatch.setattr(window, "MAP_FILES", False)

    def run():
        with open(random_stream, "rb", buffering=0) as f:
            return check_stream(f)

    rep = benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    assert rep.stats["ram_blocks"]["pc.ram"]["page"] == PAGES


def _run(*argv):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, *argv], check=True, stdout=subprocess.DEVNULL, env=env)


def test_bench_startup_baseline_python(benchmark):
    benchmark.pedantic(_run, args=("-c", "pass"), rounds=10, warmup_rounds=1)


def test_bench_startup_help(benchmark):
    """`migconform --help`; the baseline is test_bench_startup_baseline_python."""
    benchmark.pedantic(_run, args=("-m", "conformance.cli", "--help"), rounds=10, warmup_rounds=1)
