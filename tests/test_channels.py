"""Multifd captures judged with their channels: real 7.2 and 10.0 captures conform with the
channel files in any order; each kind of damage is named at its channel and offset."""

import io
import json
import lzma
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from conformance.check.pipeline import check_capture
from wireformat.multifd import MultifdChannelReader, MultifdRamPacket

DATA = Path(__file__).parent / "data" / "multifd"
CAPTURES = {"qemu72-i440fx-7.2": "7.2", "qemu100-i440fx-10.0": "10.0", "qemu100-i440fx-7.2": "7.2"}


def load(name: str, part: str) -> bytes:
    return lzma.decompress((DATA / f"{name}.{part}.bin.xz").read_bytes())


def judge(name, ch0=None, ch1=None, target=None, **kw):
    main = load(name, "main")
    chans = [("a", io.BytesIO(ch1 if ch1 is not None else load(name, "multifd1"))),
             ("b", io.BytesIO(ch0 if ch0 is not None else load(name, "multifd0")))]
    return check_capture(io.BytesIO(main), chans, target=target or CAPTURES[name], **kw)


def packets(data: bytes):
    return [r for r in MultifdChannelReader(io.BytesIO(data), "x", copy=True) if isinstance(r, MultifdRamPacket)]


@pytest.mark.parametrize("name", CAPTURES)
def test_real_captures_conform_in_any_channel_order(name):
    rep = judge(name)
    assert rep.violations == [], [v.one_line() for v in rep.violations]
    mf = rep.stats["multifd"]
    assert set(mf["channels"]) == {"multifd0", "multifd1"}  # named by the id in their init packets
    assert all(c["syncs"] == mf["sync_points"] == 3 for c in mf["channels"].values())
    assert mf["sync_mode"] == ("flush" if name == "qemu100-i440fx-10.0" else "per-section")


def test_capture_directory_from_the_cli(tmp_path):
    name = "qemu100-i440fx-10.0"
    for part in ("main", "multifd0", "multifd1"):
        (tmp_path / f"{part}.bin").write_bytes(load(name, part))
    (tmp_path / "manifest.json").write_text(json.dumps({"main": "main.bin", "channels": ["multifd1.bin", "multifd0.bin"]}))
    p = subprocess.run([sys.executable, "-m", "conformance.cli", "check", str(tmp_path), "--json"], capture_output=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert json.loads(p.stdout)["stats"]["multifd"]["sync_points"] == 3


def _drop(data: bytes, pkt: MultifdRamPacket) -> bytes:
    size = 1344 + pkt.normal_pages * 4096
    return data[: pkt.offset] + data[pkt.offset + size :]


def _patch_u32(data: bytes, at: int, value: int) -> bytes:
    return data[:at] + struct.pack(">I", value) + data[at + 4 :]


def first_code(rep):
    return (rep.violations[0].code, rep.violations[0].severity.value, rep.violations[0].channel) if rep.violations else None


@pytest.mark.parametrize("name", ["qemu72-i440fx-7.2", "qemu100-i440fx-10.0"])
def test_a_missing_sync_is_a_hang(name):
    ch1 = load(name, "multifd1")
    last_sync = [p for p in packets(ch1) if p.is_sync][-1]
    rep = judge(name, ch1=_drop(ch1, last_sync))
    assert first_code(rep) == ("multifd-sync-count", "reject", "multifd1")
    assert "waits for a SYNC that never comes" in rep.violations[0].message


def test_a_lost_data_packet_is_found_by_its_number():
    name = "qemu100-i440fx-10.0"
    ch0 = load(name, "multifd0")
    data_pkt = [p for p in packets(ch0) if not p.is_sync and p.normal_pages][0]
    rep = judge(name, ch0=_drop(ch0, data_pkt))
    # QEMU does not look at the numbers: the load completes without the packet's pages
    assert first_code(rep) == ("multifd-packet-missing", "silent-loss", "multifd")
    assert str(data_pkt.packet_num) in rep.violations[0].message
    assert not rep.rejected


@pytest.mark.parametrize("name", ["qemu72-i440fx-7.2", "qemu100-i440fx-10.0"])
def test_an_extra_sync_is_a_deviation_not_a_hang(name):
    """A SYNC packet repeated: the channel waits on a release that never comes until the load
    ends, and real destinations complete (fuzzing findings on 7.2 and 10.0)."""
    ch1 = load(name, "multifd1")
    sync = [p for p in packets(ch1) if p.is_sync][0]
    size = 1344 + sync.normal_pages * 4096
    twice = ch1[: sync.offset + size] + ch1[sync.offset: sync.offset + size] + ch1[sync.offset + size:]
    rep = judge(name, ch1=twice)
    codes = {(v.code, v.severity.value) for v in rep.violations}
    assert ("multifd-sync-extra", "deviation") in codes and not rep.rejected, codes


def test_compression_bits_on_a_sync_without_pages_load():
    """QEMU reads the flags' compression bits only in a packet that carries pages."""
    name = "qemu100-i440fx-10.0"
    ch0 = load(name, "multifd0")
    sync = [p for p in packets(ch0) if p.is_sync and not p.normal_pages and not p.zero_pages][0]
    rep = judge(name, ch0=_patch_u32(ch0, sync.offset + 8, sync.flags | 0x2))
    assert "multifd-packet" not in {v.code for v in rep.violations}, [v.one_line() for v in rep.violations]


@pytest.mark.parametrize(
    "field_offset, value, text",
    [
        (0, 0x11223345, "packet magic"),
        (8, 0x2, "flags received 2 flags expected 0"),  # zlib bit, uncompressed destination
        (16, 200, "non-zero pages"),  # normal_pages > pages_alloc
    ],
)
def test_damaged_packets_hang_the_destination(field_offset, value, text):
    name = "qemu100-i440fx-10.0"
    ch0 = load(name, "multifd0")
    pkt = [p for p in packets(ch0) if p.normal_pages][0]
    rep = judge(name, ch0=_patch_u32(ch0, pkt.offset + field_offset, value))
    bad = [v for v in rep.violations if v.severity.value == "reject"]
    assert bad and bad[0].channel == "multifd0"
    assert text in bad[0].message
    if field_offset:  # a readable header: the violation is at the packet
        assert bad[0].offset == pkt.offset


def test_unknown_block_and_offset_beyond_it():
    name = "qemu100-i440fx-10.0"
    ch0 = load(name, "multifd0")
    pkt = [p for p in packets(ch0) if p.normal_pages][0]
    name_at = pkt.offset + 64
    renamed = ch0[:name_at] + b"zz" + ch0[name_at + 2 :]
    rep = judge(name, ch0=renamed)
    assert any("unknown ram block zz" in v.message for v in rep.violations)
    far = ch0[: pkt.offset + 320] + struct.pack(">Q", 1 << 40) + ch0[pkt.offset + 328 :]
    rep = judge(name, ch0=far)
    assert any("offset too long" in v.message for v in rep.violations)


def test_channel_ids_and_counts():
    name = "qemu100-i440fx-10.0"
    ch0 = load(name, "multifd0")
    rep = judge(name, ch1=ch0)  # the same channel twice
    assert any(v.code == "multifd-init" and "already setup" in v.message for v in rep.violations)
    rep = judge(name, destination_channels=1)
    assert first_code(rep) == ("multifd-channels", "silent-loss", "multifd")
    bad_init = _patch_u32(ch0, 4, 2)
    rep = judge(name, ch0=bad_init)
    assert any("received packet version 2 expected 1" in v.message for v in rep.violations)


def test_truncated_channel():
    name = "qemu72-i440fx-7.2"
    ch1 = load(name, "multifd1")
    rep = judge(name, ch1=ch1[: len(ch1) // 2])
    assert rep.rejected
    assert {v.channel for v in rep.violations if v.severity.value == "reject"} == {"multifd1"}


def test_ram_model_replays_real_captures_and_finds_a_page_race():
    from conformance.check.pipeline import ram_model_check

    for name in CAPTURES:
        found, stats = ram_model_check(io.BytesIO(load(name, "main")),
                                       [io.BytesIO(load(name, "multifd0")), io.BytesIO(load(name, "multifd1"))],
                                       mode="flush" if name == "qemu100-i440fx-10.0" else "per-section")
        assert found == [] and stats["pages"] == 8322 and stats["held"] == 0
    # 7.2 sends a page at a packet boundary twice in one round, on both channels, with the
    # same bytes; give one copy other bytes and the two writes race
    name = "qemu72-i440fx-7.2"
    ch0, ch1 = load(name, "multifd0"), load(name, "multifd1")

    def pages(data):
        out, rnd = {}, 0
        for p in packets(data):
            for i, off in enumerate(p.normal_offsets[: p.normal_pages]):
                out.setdefault((p.ramblock, off, rnd), p.offset + 1344 + i * 4096)
            rnd += p.is_sync
        return out

    p0, p1 = pages(ch0), pages(ch1)
    shared = sorted(set(p0) & set(p1))
    assert shared, "no page sent twice in one round: the 7.2 capture changed"
    at = p1[shared[0]]
    ch1 = ch1[:at] + bytes(b ^ 0xFF for b in ch1[at : at + 16]) + ch1[at + 16 :]
    found, _ = ram_model_check(io.BytesIO(load(name, "main")), [io.BytesIO(ch0), io.BytesIO(ch1)], mode="per-section")
    assert [v.code for v in found] == ["page-race"] and found[0].severity.value == "silent-loss"


# -- check --ram-model: one pass over every file ---------------------------------------------


class Counted(io.BytesIO):
    """A file that counts the bytes read from it."""

    def __init__(self, data: bytes):
        super().__init__(data)
        self.taken = 0

    def read(self, n=-1):
        out = super().read(n)
        self.taken += len(out)
        return out

    def readinto(self, b):
        n = super().readinto(b)
        self.taken += n or 0
        return n


def _damaged(name: str, seed: int) -> tuple[bytes, bytes, bytes]:
    """The capture with one of its files cut or one bit flipped (seed 0: intact)."""
    parts = [load(name, p) for p in ("main", "multifd0", "multifd1")]
    if seed:
        which, kind = seed % 3, seed // 3 % 2
        raw = parts[which]
        at = len(raw) * (seed % 5 + 1) // 7
        parts[which] = raw[:at] if kind == 0 else raw[:at] + bytes([raw[at] ^ 0x40]) + raw[at + 1:]
    return parts[0], parts[1], parts[2]


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("name", CAPTURES)
def test_ram_model_in_one_pass_says_what_two_passes_said(name, seed):
    from conformance.check.pipeline import ram_model_check

    main, ch0, ch1 = _damaged(name, seed)
    files = [Counted(main), Counted(ch1), Counted(ch0)]
    rep = check_capture(files[0], [("a", files[1]), ("b", files[2])], target=CAPTURES[name], ram_model=True)
    # every file read once: no byte of it twice
    assert [f.taken for f in files] == [len(main), len(ch1), len(ch0)]
    # the two passes as check --ram-model made them before: the capture's checks, then the RAM
    # model over the files opened again, channels in the order of their ids
    two = check_capture(io.BytesIO(main), [("a", io.BytesIO(ch1)), ("b", io.BytesIO(ch0))], target=CAPTURES[name])
    found, stats = ram_model_check(io.BytesIO(main), [io.BytesIO(ch0), io.BytesIO(ch1)], mode=two.stats["multifd"]["sync_mode"])
    assert [v.as_json() for v in rep.violations] == [v.as_json() for v in two.violations + found]
    assert rep.stats == {**two.stats, "ram_model": stats}
    if seed == 0:
        assert rep.violations == [] and stats["sync_points"] == 3
