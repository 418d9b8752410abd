"""Real postcopy streams, captured through the recording proxy, judged by the checker.

* a postcopy migration (7.2, 10.0) whose destination guest runs during postcopy, so that the
  return path carries page requests: main stream and return path must conform;
* a postcopy recovery (10.0, and 7.2, which recovers the same way): the main channel before
  the cut (it ends where the network failed, nothing else wrong), the new main channel
  (no header) checked as a recovery channel after the old one, and both return paths;
* multifd + postcopy: 7.2 accepts the pair (run for real: what happens is asserted as this
  run's facts), 10.0 refuses it over QMP (migrate_caps_check, migration/options.c).

The guest RAM is a file of random bytes; after each migration the destination's RAM is
compared with it (the pages the guest never wrote).
"""

from __future__ import annotations

import io
import os
import tempfile
import time
from pathlib import Path

import pytest

from conformance.check.pipeline import check_capture, check_stream
from conformance.rules.decode_errors import code_of
from conformance.rules.loader import Loader
from conformance.rules.returnpath import ReturnPathModel
from conformance.rules.migration_states import DESTINATION, SOURCE, predict_sequence
from conformance.qemu import QemuProcess, QmpCommandError
from conformance.rules.catalogue import Severity
from tests.test_postcopy_states import (
    CAPS,
    MEM_MB,
    Pair,
    random_ram,  # noqa: F401  (fixture)
    reader,  # noqa: F401  (fixture)
)
from wireformat.reader import DecodeError, StreamReader
from wireformat.returnpath import iter_messages

PAGE = 4096
MULTIFD_REFUSED = "Postcopy is not yet compatible with multifd"  # migration/options.c, 8.1..10.0
# the guest writes below 2 MiB (SeaBIOS, the kernel loaded at 1 MiB) and near the top
# (observed with 128 MiB: SeaBIOS's relocated code at 0x6fe2000..0x7000000, tables in the
# last 128 KiB); the reader kernel only reads: the pages in between must be the source's
COMPARED = (2 << 20, (MEM_MB - 32) << 20)


def destination_ram(pair: Pair, mem_mb: int = MEM_MB) -> bytes:
    with tempfile.TemporaryDirectory(prefix="migconform-ram-") as tmp:
        dump = Path(tmp) / "ram.bin"
        pair.dst.cmd("pmemsave", val=0, size=mem_mb << 20, filename=str(dump))
        return dump.read_bytes()


def differing_pages(a: bytes, b: bytes, start: int, end: int) -> list[int]:
    return [off for off in range(start, end, PAGE) if a[off:off + PAGE] != b[off:off + PAGE]]


def judge(version: str, main: bytes, rp: bytes, *, recovery: bool = False, previous: tuple | None = None):
    """A Loader fed the main channel's records, then closed, and a ReturnPathModel fed its
    return path's messages (the way the source reads them): (loader, reader, messages,
    violations of both). `previous`: (Loader, sections) of the channel resumed."""
    loader = Loader(version, recovery=recovery, previous=previous[0] if previous else None)
    reader = StreamReader(io.BytesIO(main), headerless=recovery, known_sections=previous[1] if previous else None)
    try:
        for rec in reader:
            loader.feed(rec)
    except DecodeError as e:
        loader.fail(code_of(e), e.channel, e.offset, e.message, e.section)
    loader.close(reader.b.offset())
    messages = list(iter_messages(io.BytesIO(rp)))
    model = ReturnPathModel(version, pings=loader.pings, blocks=loader.blocks)
    model.feed_all(messages)
    return loader, reader, messages, loader.violations + model.violations


def run_postcopy(qemu, version: str, ram_file: Path, kernel: Path, *, cut: bool) -> dict:
    """A postcopy migration through the proxy, the destination guest running from the start
    of postcopy; with `cut`, the network fails a second later and the migration is recovered."""
    pair = Pair(qemu(version), ram_file, kernel=kernel)
    try:
        pair.migrate()
        pair.wait(SOURCE, {"active"})
        time.sleep(0.5)  # some precopy first
        pair.src.cmd("migrate-start-postcopy")
        pair.wait(SOURCE, {"postcopy-active"})
        pair.wait(DESTINATION, {"postcopy-active"})
        pair.dst.cmd("cont")
        time.sleep(1.0)
        if cut:
            pair.cut()
            pair.wait(SOURCE, {"postcopy-paused"})
            pair.wait(DESTINATION, {"postcopy-paused"})
            pair.unthrottle()
            pair.recover(oob=True)  # out of band: answered even if a blocked vCPU holds the main loop
        else:
            pair.unthrottle()
        pair.wait(SOURCE, {"completed"}, timeout=60.0)
        pair.wait(DESTINATION, {"completed"})
        assert pair.recorders[-1].wait_closed(10.0)
        ram = destination_ram(pair)
        steps = ["migrate", "start-postcopy"] + (["cut", "recover"] if cut else []) + ["complete"]
        for side in (SOURCE, DESTINATION):
            assert pair.events(side) == predict_sequence(side, version, steps)
        conns = [c for rec in pair.recorders for c in rec.connections]
        assert len(conns) == (2 if cut else 1), [c.peer for c in conns]
        assert not any(c.truncated for c in conns)
        return {"channels": [(bytes(c.forward), bytes(c.backward)) for c in conns], "ram": ram,
                "timeline": pair.timeline, "qmp_blocked": pair.blocked}
    finally:
        pair.close()


@pytest.fixture(scope="module")
def captures(qemu, random_ram, reader):  # noqa: F811  (pytest fixtures)
    made: dict = {}

    def get(version: str, cut: bool) -> dict:
        if (version, cut) not in made:
            made[(version, cut)] = run_postcopy(qemu, version, random_ram, reader, cut=cut)
        return made[(version, cut)]

    return get


# ------------------------------------------------------------------ postcopy

@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.parametrize("version", ["7.2", "10.0"])
def test_postcopy_stream_conforms(captures, version, random_ram):  # noqa: F811
    cap = captures(version, cut=False)
    (main, rp), = cap["channels"]
    rep = check_stream(io.BytesIO(main), target=version)
    assert [v.one_line() for v in rep.violations] == []
    assert rep.stats["postcopy"] == "RUNNING" and rep.stats["status"] == "completed"
    commands = rep.stats["commands"]
    for name in ("MIG_CMD_OPEN_RETURN_PATH", "MIG_CMD_POSTCOPY_ADVISE", "MIG_CMD_POSTCOPY_RAM_DISCARD",
                 "MIG_CMD_PACKAGED", "MIG_CMD_POSTCOPY_LISTEN", "MIG_CMD_POSTCOPY_RUN"):
        assert commands.get(name), (name, commands)
    assert commands["MIG_CMD_PING"] == 4
    assert bool(commands.get("MIG_CMD_SWITCHOVER_START")) == (version == "10.0")

    _, _, messages, found = judge(version, main, rp)
    assert [v.one_line() for v in found] == []
    names = [m.name for m in messages]
    assert sorted(m.args["value"] for m in messages if m.name == "MIG_RP_MSG_PONG") == [1, 2, 3, 4]
    assert "MIG_RP_MSG_REQ_PAGES_ID" in names and "MIG_RP_MSG_REQ_PAGES" in names  # the guest asked for pages
    assert names[-1] == "MIG_RP_MSG_SHUT" and messages[-1].args == {"value": 0}

    src = random_ram.read_bytes()
    assert differing_pages(cap["ram"], src, *COMPARED) == []


# ------------------------------------------------------------------ recovery

CUT_CODES = {"missing-eof", "truncated"}  # a cut between records, or inside one


def check_cut_channel(version: str, old: bytes):
    """The channel before the cut: nothing wrong but its end, where the network failed."""
    rep = check_stream(io.BytesIO(old), target=version)
    assert len(rep.violations) == 1, [v.one_line() for v in rep.violations]
    (v,) = rep.violations
    assert v.code in CUT_CODES and v.severity is Severity.REJECT, v.one_line()
    assert len(old) - (PAGE + 512) <= v.offset <= len(old), (v.offset, len(old))
    assert rep.stats["postcopy"] == "RUNNING"
    return rep


@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.parametrize("version", ["10.0", "7.2"])
def test_postcopy_recovery_streams_conform(captures, version, random_ram):  # noqa: F811
    cap = captures(version, cut=True)
    (old, old_rp), (new, new_rp) = cap["channels"]
    check_cut_channel(version, old)

    # the new main channel: no header; RECV_BITMAP per block, POSTCOPY_RESUME, then RAM
    assert new[:4] != b"QEVM"
    rep = check_stream(io.BytesIO(new), target=version, recovery=True, previous=io.BytesIO(old))
    assert [v.one_line() for v in rep.violations] == []
    assert rep.stats["status"] == "completed"
    assert rep.stats["commands"]["MIG_CMD_POSTCOPY_RESUME"] == 1
    assert rep.stats["commands"]["MIG_CMD_RECV_BITMAP"] == len(rep.stats["ram_blocks"])

    # with the return paths: the old one ends at the cut (PONGs, page requests), the new one
    # carries a received-pages bitmap per block, RESUME_ACK 1, page requests, SHUT 0
    old_loader, old_reader, old_msgs, found = judge(version, old, old_rp)
    assert [v.code for v in found] in (["missing-eof"], ["truncated"])
    assert sorted(m.args["value"] for m in old_msgs if m.name == "MIG_RP_MSG_PONG") == [1, 2, 3, 4]
    _, _, msgs, found = judge(version, new, new_rp, recovery=True, previous=(old_loader, old_reader.sections))
    assert [v.one_line() for v in found] == []
    names = [m.name for m in msgs]
    blocks = [m.args["block"] for m in msgs if m.name == "MIG_RP_MSG_RECV_BITMAP"]
    assert sorted(blocks) == sorted(rep.stats["ram_blocks"])
    assert names[len(blocks)] == "MIG_RP_MSG_RESUME_ACK" and msgs[len(blocks)].args == {"value": 1}
    assert names[-1] == "MIG_RP_MSG_SHUT" and msgs[-1].args == {"value": 0}
    # a destination names the block again in its first request on the new return path
    requests = [n for n in names if n.startswith("MIG_RP_MSG_REQ_PAGES")]
    assert not requests or requests[0] == "MIG_RP_MSG_REQ_PAGES_ID"

    src = random_ram.read_bytes()
    assert differing_pages(cap["ram"], src, *COMPARED) == []
    print(f"{version}: old main {len(old)} B, old RP {len(old_rp)} B, new main {len(new)} B, new RP {len(new_rp)} B "
          f"({names.count('MIG_RP_MSG_REQ_PAGES') + names.count('MIG_RP_MSG_REQ_PAGES_ID')} page requests); "
          f"{cap['timeline']}; destination QMP unanswered at {cap['qmp_blocked']}")


@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.parametrize("version", ["10.0", "7.2"])
def test_cut_channel_status_is_postcopy_paused(captures, version):
    (old, _), _ = captures(version, cut=True)["channels"]
    rep = check_cut_channel(version, old)
    assert rep.stats["status"] == "postcopy-paused"


# ------------------------------------------------------------------ multifd + postcopy

def shm_dir() -> Path | None:
    """Postcopy on a shared file-backed RAM needs a tmpfs (userfaultfd: anonymous, shmem, hugetlbfs)."""
    p = Path("/dev/shm")
    return p if p.is_dir() and os.access(p, os.W_OK) else None


@pytest.mark.qemu
@pytest.mark.slow
def test_multifd_postcopy_7_2(qemu, random_ram):  # noqa: F811
    """7.2 accepts multifd + postcopy-ram (8.1..10.0 refuse the pair). What this run does,
    asserted as observed on 7.2.22: the migration completes on both sides (events), the
    destination's RAM is the source's, the capture conforms (main stream plus two multifd
    channels) — and the destination then dies of SIGABRT in its cleanup:
    "yank_unregister_instance: Assertion `QLIST_EMPTY(&entry->yankfns)' failed"."""
    shm = shm_dir()
    if shm is None:
        pytest.skip("no writable /dev/shm for a shared destination RAM file")
    caps = {**CAPS, "multifd": True}
    dst_file = shm / f"migconform-dst-{os.getpid()}.ram"
    dst_file.write_bytes(b"")
    os.truncate(dst_file, MEM_MB << 20)
    pair = None
    try:
        pair = Pair(qemu("7.2"), random_ram, capabilities=caps, parameters={"multifd-channels": 2},
                    dst_shared_ram=dst_file)
        pair.migrate()
        pair.wait(SOURCE, {"active"})
        time.sleep(1.0)
        pair.src.cmd("migrate-start-postcopy")
        pair.unthrottle()
        pair.wait(SOURCE, {"completed"}, timeout=60.0)
        status = pair.wait(DESTINATION, {"completed"})
        code = pair.dst.wait_exit(10.0)
        pair.recorders[-1].wait_closed(5.0)
        events = {side: pair.events(side, pump=pair.q(side).alive()) for side in (SOURCE, DESTINATION)}
        conns = pair.recorders[-1].connections
        channels = [bytes(c.forward) for c in conns]
        stderr = pair.dst.stderr
    finally:
        if pair is not None:
            pair.close()
        ram = dst_file.read_bytes()
        dst_file.unlink()
    src = random_ram.read_bytes()
    print(f"7.2 multifd+postcopy: destination {status}, exit code {code}, events {events}, "
          f"channels {[len(c) for c in channels]}, stderr {stderr.strip()[-200:]!r}")
    for side in (SOURCE, DESTINATION):
        assert events[side] == predict_sequence(side, "7.2", "postcopy")
    assert differing_pages(ram, src, 1 << 20, MEM_MB << 20) == []
    assert len(channels) == 3 and all(c[:4] == b"\x11\x22\x33\x44" for c in channels[1:])
    rep = check_capture(io.BytesIO(channels[0]), [(f"multifd{i}", io.BytesIO(c)) for i, c in enumerate(channels[1:])],
                        target="7.2")
    assert [v.one_line() for v in rep.violations] == []
    assert rep.stats["postcopy"] == "RUNNING" and sum(rep.stats["multifd"]["pages"].values()) > 0
    # the fact of this run: the destination does not survive its own completion
    assert code == -6 and "yank_unregister_instance: Assertion" in stderr, (code, stderr[-300:])


@pytest.mark.qemu
def test_multifd_postcopy_refused_by_10_0(qemu):
    with QemuProcess(qemu("10.0"), ["-machine", "pc-i440fx-10.0"], name="caps-10.0") as q:
        for first, second in ((None, {"postcopy-ram": True, "multifd": True}),
                              ({"postcopy-ram": True}, {"multifd": True}),
                              ({"multifd": True}, {"postcopy-ram": True})):
            q.set_capabilities({"postcopy-ram": False, "multifd": False})
            if first:
                q.set_capabilities(first)
            with pytest.raises(QmpCommandError) as e:
                q.set_capabilities(second)
            assert e.value.desc == MULTIFD_REFUSED
            assert e.value.error_class == "GenericError"
        caps = {c["capability"]: c["state"] for c in q.cmd("query-migrate-capabilities")}
        assert not (caps["postcopy-ram"] and caps["multifd"])
