"""Multifd fuzzing campaigns: the packet edits land on the wire, every edit kind builds, a
loader-only campaign on real captures (tests/data/multifd), and test-sized campaigns against
real 7.2 and 10.0 destinations with two channels."""

from __future__ import annotations

import io
import json
import lzma
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from wireformat.multifd import (
    MultifdChannelReader,
    MultifdInit,
    MultifdInitPacket,
    MultifdPacketV72,
    MultifdPacketV90,
    MultifdRamPacket,
    ram_packet_header_size,
)

from conformance.tools.fuzz.campaign import Campaign
from conformance.tools.fuzz.loader import LoaderTarget
from conformance.tools.fuzz.store import FindingStore
from strategies.fuzz_multifd import (
    EDITS,
    MULTIFD_EDITS,
    MState,
    MultifdFuzzInput,
    decode_multifd_seed,
    multifd_inputs,
)
from strategies.fuzz import State

DATA = Path(__file__).parent / "data" / "multifd"


def _capture(name: str) -> tuple[bytes, list[bytes]]:
    main = lzma.decompress((DATA / f"{name}.main.bin.xz").read_bytes())
    return main, [lzma.decompress((DATA / f"{name}.multifd{k}.bin.xz").read_bytes()) for k in (0, 1)]


# a 7.2 source (7.2 header, zero pages in the main stream) and a 10.0 one (zero_pages, flushes)
CAPTURES = {"7.2": _capture("qemu72-i440fx-7.2"), "10.0": _capture("qemu100-i440fx-10.0")}
SEEDS = {v: decode_multifd_seed(*c) for v, c in CAPTURES.items()}
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize("version", sorted(SEEDS))
def test_the_seed_rebuilds_byte_for_byte(version):
    main, chans = CAPTURES[version]
    files = MultifdFuzzInput(SEEDS[version], [], SEEDS[version].main.units, SEEDS[version].channels).data()
    assert files == {"main.bin": main, "multifd0.bin": chans[0], "multifd1.bin": chans[1]}
    assert SEEDS[version].layout == ("7.2" if version == "7.2" else "9.0")
    assert [ch[0].record.id for ch in SEEDS[version].channels] == [0, 1]


def _header_at(raw: bytes, layout: str):
    """The header of the packet at the start of raw, parsed on its own (the data may no longer
    be what the counts say, after an edit of them)."""
    codec = MultifdPacketV72 if layout == "7.2" else MultifdPacketV90
    return codec.parse(raw[:ram_packet_header_size()])


@pytest.mark.parametrize("version", sorted(SEEDS))
@pytest.mark.parametrize("name", ["packet-counts", "packet-offset", "packet-num", "packet-flags", "packet-magic",
                                  "packet-block", "init-packet", "packet-size"])
def test_a_field_edit_lands_on_the_wire(version, name):
    """The edited channel, cut at the edited packet's place, decodes to the edited values."""
    seed = SEEDS[version]

    @SETTINGS
    @given(st.data())
    def check(data):
        s = MState(seed, State(seed.main, list(seed.main.units)), [list(ch) for ch in seed.channels])
        what = MULTIFD_EDITS[name](data.draw, s)
        if what is None:
            return
        files = MultifdFuzzInput(seed, [what], s.main.units, s.channels).data()
        edited = [(c, i) for c, ch in enumerate(s.channels) for i, u in enumerate(ch) if u.raw is None]
        assert len(edited) == 1, what
        c, i = edited[0]
        m = re.match(r"(?:init of )?multifd(\d+)", what)
        assert m and int(m.group(1)) == c, what  # the description names the channel it edited
        wire = files[f"multifd{c}.bin"]
        at = sum(len(u.bytes()) for u in s.channels[c][:i])
        rec = s.channels[c][i].record
        assert wire != b"".join(u.bytes() for u in seed.channels[c])
        if isinstance(rec, MultifdInit):
            got = MultifdInitPacket.parse(wire[:64])
            assert (got.magic, got.version, got.uuid, got.id) == (rec.magic, rec.version, rec.uuid, rec.id)
            return
        got = _header_at(wire[at:], seed.layout)
        assert (got.magic, got.version, got.flags, got.pages_alloc, got.normal_pages, got.next_packet_size,
                got.packet_num) == (rec.magic, rec.version, rec.flags, rec.pages_alloc, rec.normal_pages,
                                    rec.next_packet_size, rec.packet_num)
        assert got.ramblock.split(b"\0")[0].decode("latin-1") == rec.ramblock
        assert list(got.offset[:len(rec.normal_offsets)]) == rec.normal_offsets
        if seed.layout == "9.0":
            assert got.zero_pages == rec.zero_pages
        old = seed.channels[c][i].record  # the one field the description names differs from the seed's
        assert isinstance(old, MultifdRamPacket) and rec != old

    check()


@pytest.mark.parametrize("version", sorted(SEEDS))
def test_a_packet_num_edit_is_what_the_channel_reader_reads(version):
    """End to end through the same reader check uses: the new packet_num is in the channel."""
    seed = SEEDS[version]

    @SETTINGS
    @given(st.data())
    def check(data):
        s = MState(seed, State(seed.main, list(seed.main.units)), [list(ch) for ch in seed.channels])
        what = MULTIFD_EDITS["packet-num"](data.draw, s)
        if what is None:  # the value drawn was the packet's own
            return
        files = MultifdFuzzInput(seed, [what], s.main.units, s.channels).data()
        c = int(re.match(r"multifd(\d+) #(\d+)", what).group(1))
        i = int(re.match(r"multifd(\d+) #(\d+)", what).group(2))
        new = int(what.rsplit("-> ", 1)[1])
        recs = list(MultifdChannelReader(io.BytesIO(files[f"multifd{c}.bin"]), f"multifd{c}"))
        assert recs[i].packet_num == new

    check()


@pytest.mark.parametrize("version", sorted(SEEDS))
def test_drop_duplicate_move_change_the_packet_counts(version):
    seed = SEEDS[version]
    before = sum(len(ch) for ch in seed.channels)

    @SETTINGS
    @given(st.data(), st.sampled_from(["drop-packet", "duplicate-packet", "move-packet"]))
    def check(data, name):
        s = MState(seed, State(seed.main, list(seed.main.units)), [list(ch) for ch in seed.channels])
        what = MULTIFD_EDITS[name](data.draw, s)
        assert what is not None  # real captures always have packets to drop, copy or move
        files = MultifdFuzzInput(seed, [what], s.main.units, s.channels).data()
        counts = [len(list(MultifdChannelReader(io.BytesIO(files[f"multifd{c}.bin"]))))
                  for c in range(len(seed.channels))]
        assert sum(counts) == before + {"drop-packet": -1, "duplicate-packet": 1, "move-packet": 0}[name], what
        if name == "move-packet":
            assert sorted(files.values()) != sorted(MultifdFuzzInput(seed, [], seed.main.units, seed.channels).data().values()) \
                or " to multifd" in what

    check()


@pytest.mark.parametrize("version", sorted(SEEDS))
def test_every_edit_kind_builds(version):
    """Each edit, alone, applies on a real capture and builds a capture whose main stream and
    channels are bytes (the main stream's edits compose through the `main:` names)."""
    seed = SEEDS[version]
    applied: set[str] = set()
    for name in EDITS:
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(multifd_inputs(seed, max_edits=1, names=(name,)))
        def check(fi):
            files = fi.data()
            assert set(files) == {"main.bin", "multifd0.bin", "multifd1.bin"}
            assert all(isinstance(v, bytes) for v in files.values())
            applied.update(e.split(":", 1)[0] if not e.startswith("main:") else ":".join(e.split(":", 2)[:2])
                           for e in fi.edits)
            if fi.edits:
                assert fi.changed() or files != MultifdFuzzInput(seed, [], seed.main.units, seed.channels).data() \
                    or any(w in fi.edits[0] for w in ("dropped", "duplicated", "swapped", "moved", "cut"))

        check()
    # device-state packets exist only for a 9.0+ header; every other kind applies to both
    missing = set(EDITS) - applied - ({"device-state-packet"} if version == "7.2" else set())
    assert not missing


@pytest.mark.parametrize("version", sorted(SEEDS))
def test_loader_accepts_the_seed_and_rejects_a_broken_init(version, tmp_path):
    seed = SEEDS[version]
    t = LoaderTarget(version, channels=2)
    try:
        files = MultifdFuzzInput(seed, [], seed.main.units, seed.channels).data()
        assert t.run(files) == ("accepted", None)
        bad = dict(files, **{"multifd1.bin": b"\x11\x22\x33\x44\x00\x00\x00\x09" + files["multifd1.bin"][8:]})
        verdict, first = t.run(bad)
        assert verdict == "rejected" and first.startswith("multifd-init"), first
    finally:
        t.close()


def test_loader_only_multifd_campaign_runs_and_saves_capture_directories(tmp_path):
    """A few seconds on the 10.0 capture with the loader alone: it judges edited captures both
    ways, and a finding (forced here by a loader that raises) is saved as a capture directory
    that `migconform check` reads."""
    from conformance.cli import main as cli

    seed = SEEDS["10.0"]
    loader = LoaderTarget("10.0", machine="pc-i440fx-10.0", channels=2)
    c = Campaign(seed=seed, seed_name="seed", store=FindingStore(tmp_path), version="10.0", machine="pc",
                 devices="none", loader=loader, database=None, key="multifd", inputs=multifd_inputs, channels=2,
                 extra_files={"note.txt": b"not a stream"})
    stats = c.run(4.0)
    assert stats.execs > 5
    assert stats.verdicts["loader:accepted"] + stats.verdicts["loader:rejected"] == stats.execs
    assert stats.verdicts["loader:rejected"] > 0
    fi = MultifdFuzzInput(seed, ["packet-num: by hand"], seed.main.units, seed.channels)
    path = c._save("loader-error|x", fi, {"mutation": fi.edits, "channels": 2})
    saved = json.loads(path.read_text())
    d = tmp_path / saved["stream"]
    assert sorted(p.name for p in d.iterdir()) == ["main.bin", "multifd0.bin", "multifd1.bin", "note.txt"]
    assert saved["stream_size"] == sum(len(v) for v in fi.data().values()) + len(b"not a stream")
    assert cli(["check", str(d), "--target", "10.0"]) == 0
    loader.close()


# ------------------------------------------------------------------ real QEMU

@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.parametrize("version", ["7.2", "10.0"])
def test_multifd_campaign_against_a_real_destination(version, qemu, tmp_path, capsys):
    """`migconform fuzz --channels 2` for seconds: the seed capture, a destination with multifd
    and two channels fed over loopback, both targets judging, no QEMU left behind."""
    from conformance.cli import main as cli
    from conformance.qemu import process
    from conformance.qemu.fuzz_target import MultifdRealTarget
    from conformance.tools.fuzz.command import _load_multifd_seed

    binary = qemu(version)
    rc = cli(["fuzz", "--qemu", version, "--channels", "2", "--devices", "none", "--time", "12s", "--jobs", "1",
              "--exec-timeout", "5", "--findings", str(tmp_path), "--progress-every", "1"])
    # (5 s: on a loaded machine the unedited seed took over 2 s and came back as a "hang" finding)
    out, err = capsys.readouterr()
    assert rc in (0, 1), err
    m = re.search(r"(\d+) execs .*real:", out.splitlines()[0])  # the closing line: verdicts of both targets
    assert m and int(m.group(1)) >= 2 and "loader:" in out.splitlines()[0], out
    seed_dir = next((tmp_path / "seeds").iterdir())
    manifest = json.loads((seed_dir / "manifest.json").read_text())
    assert manifest["channels"] == ["multifd0.bin", "multifd1.bin"]
    assert manifest["arguments"]["parameters"] == {"multifd-channels": 2}
    assert not [p for p in process._live if p.alive()]
    # the unedited seed: accepted by the destination and the loader, the load traced
    seed = _load_multifd_seed(seed_dir)
    with MultifdRealTarget(binary, channels=2, machine="pc", devices="none", warm=1, timeout=10) as t:
        ex = t.run(MultifdFuzzInput(seed, [], seed.main.units, seed.channels).data())
    assert ex.verdict == "accepted", ex
    assert any(e[0] == "vmstate_load_state" for e in ex.events)
    for f in tmp_path.glob("finding-*.json"):  # every finding: a capture directory, the edits named
        meta = json.loads(f.read_text())
        assert meta["channels"] == 2 and meta["mutation"] and (tmp_path / meta["stream"] / "manifest.json").is_file()


@pytest.mark.qemu
@pytest.mark.slow
def test_a_channel_without_its_first_sync_can_crash_a_10_0_destination(qemu, tmp_path):
    """Found by a multifd campaign: without the SYNC packet a source sends first on every
    channel, the channel's first zero-page packet is processed at once, racing the main
    stream; when it wins, multifd_recv_zero_page_process reads the RAM block's receive bitmap
    before ram_load_setup allocated it: SIGSEGV (gdb: ramblock_recv_bitmap_test_byte_offset
    <- multifd_recv_zero_page_process, in a multifd receive thread). When it loses, the
    destination waits for the missing SYNC for ever. It crashed in about a third of the loads here."""
    import signal

    from conformance.qemu.fuzz_target import MultifdRealTarget
    from conformance.qemu.tcp_migration import capture_channels

    binary = qemu("10.0")
    cap = capture_channels(binary, binary, machine="pc", capabilities={"multifd": True},
                           parameters={"multifd-channels": 2})
    seed = decode_multifd_seed(cap.main, [cap.multifd[0], cap.multifd[1]])
    first = seed.channels[0][1].record
    assert isinstance(first, MultifdRamPacket) and first.is_sync and first.normal_pages == 0
    assert any(u.record.zero_pages for u in seed.channels[0][2:] if isinstance(u.record, MultifdRamPacket))
    channels = [list(seed.channels[0][:1]) + list(seed.channels[0][2:]), seed.channels[1]]
    files = MultifdFuzzInput(seed, ["drop-packet: multifd0 #1"], seed.main.units, channels).data()
    verdicts = []
    with MultifdRealTarget(binary, channels=2, machine="pc", devices="none", warm=1, timeout=3, trace=False) as t:
        for _ in range(12):
            ex = t.run(files)
            verdicts.append((ex.verdict, ex.exit_code))
            if ex.verdict == "crashed":
                break
    assert set(verdicts) <= {("hung", None), ("crashed", -signal.SIGSEGV)}, verdicts
    assert verdicts[-1] == ("crashed", -signal.SIGSEGV), verdicts
