"""Regular files are read through a sliding memory map (wireformat/window.py): the records
are exactly those the streaming window and the construct definition give, wherever the map
boundaries fall, and resident memory does not grow with the file."""

import io
import os
import subprocess
import sys
import tempfile

import pytest
from hypothesis import given, strategies as st

from strategies.streams import precopy_streams
from tests.test_reader import _ram_stream, expand, wire_fields
from wireformat import ram, window
from wireformat.records import RamRecord, RamRun, TrailingData
from wireformat.reader import StreamReader
from wireformat.window import Window


def _mapped(data: bytes, **kw):
    """Records of `data` read from a real file through the map (small windows: many remaps)."""
    fd, path = tempfile.mkstemp()
    try:
        os.write(fd, data)
        os.close(fd)
        with open(path, "rb", buffering=0) as f:
            reader = StreamReader(f, **kw)
            assert reader.b.mapped
            out = []
            for r in reader:
                out.extend(expand([r]))
            return out
    finally:
        os.unlink(path)


def _streamed(data: bytes, **kw):
    out = []
    for r in StreamReader(io.BytesIO(data), **kw):
        out.extend(expand([r]))
    return out


@given(precopy_streams(), st.sampled_from([1 << 16, 1 << 17, 8 << 20]))
def test_mapped_reading_gives_the_streamed_records(gen, size):
    a = _streamed(gen.data, window=size)
    b = _mapped(gen.data, window=size)
    assert [(r.offset, wire_fields(r)) for r in b] == [(r.offset, wire_fields(r)) for r in a]


@given(st.lists(st.tuples(st.sampled_from([0x28, 0x22]), st.integers(0, 2**30), st.binary(min_size=1, max_size=1)),
                min_size=1, max_size=80),
       st.integers(0, 4095))
def test_mapped_fast_path_agrees_with_construct(items, pad):
    """The bulk run validation over a map, runs crossing map boundaries (64 KiB windows,
    the stream shifted by `pad` bytes against the page grain), against construct's parse
    of each record."""
    body, expect = bytearray(), []
    for flags, page, b in items:
        rec = RamRecord(addr=page * 4096, flags=flags, data=b * 4096) if flags == 0x28 else \
            RamRecord(addr=page * 4096, flags=flags, fill=b[0])
        raw = ram.build_record(rec)
        body += raw
        expect.append(ram.parse_record(raw))
    stream = _ram_stream(bytes(body))
    # a header of `pad` bytes in front: the reader starts at the file's current offset
    fd, path = tempfile.mkstemp()
    try:
        os.write(fd, bytes(pad) + stream)
        os.close(fd)
        with open(path, "rb", buffering=0) as f:
            f.seek(pad)
            reader = StreamReader(f, window=1 << 16)
            got, runs = [], 0
            for r in reader:
                runs += isinstance(r, RamRun)
                got.extend(x for x in expand([r]) if isinstance(x, RamRecord) and x.continued)
    finally:
        os.unlink(path)
    assert [wire_fields(r) for r in got] == [wire_fields(r) for r in expect]
    assert [r.offset for r in got] == [r.offset for r in _streamed(stream) if isinstance(r, RamRecord) and r.continued]


def test_only_regular_files_are_mapped(tmp_path):
    p = tmp_path / "s.bin"
    p.write_bytes(b"QEVM" + bytes(100))
    with open(p, "rb", buffering=0) as f:
        assert Window(f, 1 << 16).mapped
    with open(p, "rb") as f:  # a BufferedReader over the file: mapped from where it stands
        f.read(3)
        w = Window(f, 1 << 16)
        assert w.mapped and w.fill(1) and w.buf[w.pos] == ord("M")
    assert not Window(io.BytesIO(b"x"), 1 << 16).mapped
    r, wfd = os.pipe()
    with open(r, "rb", buffering=0) as f:
        os.close(wfd)
        assert not Window(f, 1 << 16).mapped


def test_a_file_that_grows_is_followed(tmp_path):
    p = tmp_path / "s.bin"
    p.write_bytes(b"a" * 100)
    with open(p, "rb", buffering=0) as f:
        w = Window(f, 1 << 16)
        assert w.fill(100) and not w.fill(101) and w.eof
        w.pos = 100
        with open(p, "ab") as out:
            out.write(b"b" * 50)
        assert w.fill(50) and w.buf[w.pos] == ord("b")


def test_skip_jumps_without_mapping_and_truncation_is_reported(tmp_path):
    p = tmp_path / "s.bin"
    p.write_bytes(bytes(10 << 20) + b"end")
    with open(p, "rb", buffering=0) as f:
        w = Window(f, 1 << 16)
        w.skip(10 << 20)
        assert w.offset() == 10 << 20 and w.fill(3) and bytes(w.mv[w.pos : w.pos + 3]) == b"end"
        w.pos += 3
        with pytest.raises(window.Truncated):
            w.skip(1)


@pytest.mark.parametrize("mapped", [True, False])
def test_trailing_data_head_is_only_the_stream(tmp_path, mapped, monkeypatch):
    monkeypatch.setattr(window, "MAP_FILES", mapped)
    p = tmp_path / "s.bin"
    p.write_bytes(b"QEVM\x00\x00\x00\x03\x00" + b"\xaa\xbb\xcc")
    with open(p, "rb", buffering=0) as f:
        recs = list(StreamReader(f))
    tail = [r for r in recs if isinstance(r, TrailingData)]
    assert [(t.length, t.head) for t in tail] == [(3, b"\xaa\xbb\xcc")]


_PEAK = """
import resource, sys
from wireformat.reader import StreamReader
from wireformat.records import RamRun
n = 0
with open(sys.argv[1], "rb", buffering=0) as f:
    for r in StreamReader(f):
        n += r.count if isinstance(r, RamRun) else 0
print(n, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10)
"""


def _peak(path) -> tuple[int, int]:
    p = subprocess.run([sys.executable, "-c", _PEAK, str(path)], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert p.returncode == 0, p.stderr
    pages, rss = map(int, p.stdout.split())
    return pages, rss


def test_resident_memory_stays_flat_over_a_large_file(tmp_path):
    """96 MiB of page records through the 8 MiB map: the reader's peak RSS (in a fresh
    process) is within 24 MiB of reading a 1-page stream — mapped pages are given back as
    the window moves on, and page payloads are never copied."""
    page = os.urandom(4096)
    small, big = tmp_path / "small.bin", tmp_path / "big.bin"
    small.write_bytes(_ram_stream((0x28).to_bytes(8, "big") + page))
    with open(big, "wb") as f:
        rec = [(i * 4096 | 0x28).to_bytes(8, "big") + page for i in range(1024)]
        stream = _ram_stream(b"".join(rec))
        head, tail = stream[: stream.index(rec[0])], stream[stream.index(rec[-1]) + len(rec[-1]):]
        f.write(head)
        for k in range(24):  # 24 x 1024 pages
            f.write(b"".join((((k * 1024 + i) * 4096) | 0x28).to_bytes(8, "big") + page for i in range(1024)))
        f.write(tail)
    n_small, rss_small = _peak(small)
    n_big, rss_big = _peak(big)
    assert (n_small, n_big) == (1, 24 * 1024)
    assert rss_big - rss_small < 24 << 20, f"peak RSS {rss_big >> 20} MiB vs {rss_small >> 20} MiB for 1 page"


def test_capture_channel_files_are_mapped_and_judged_as_when_streamed(tmp_path, monkeypatch):
    """The channels of a capture directory of plain files reach the multifd reader as the
    files themselves, rewound after their id was read (so mapped, not copied), and the
    verdict is the one streaming them gives."""
    import lzma
    from pathlib import Path

    from conformance.check.judge import judge_path

    data = Path(__file__).parent / "data" / "multifd"
    for part in ("main", "multifd0", "multifd1"):
        (tmp_path / f"{part}.bin").write_bytes(lzma.decompress((data / f"qemu100-i440fx-10.0.{part}.bin.xz").read_bytes()))
    seen = []
    real_init = Window.__init__

    def spy(self, src, size):
        real_init(self, src, size)
        seen.append(self.mapped)

    monkeypatch.setattr(Window, "__init__", spy)
    mapped = judge_path(str(tmp_path))
    assert seen and all(seen), seen  # the main stream and both channels
    monkeypatch.setattr(window, "MAP_FILES", False)
    seen.clear()
    streamed = judge_path(str(tmp_path))
    assert seen and not any(seen)
    a, b = mapped.as_json(), streamed.as_json()
    for j in (a, b):
        j["stats"].pop("seconds")
    assert a == b
    assert a["stats"]["multifd"]  # the channels were read: their packets are counted
