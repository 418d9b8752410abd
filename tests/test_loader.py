"""The reference loader judges streams as QEMU 7.2 / 10.0 destinations do (the codes: docs/violations.md)."""

import io
import struct

import pytest
from hypothesis import given, strategies as st

from conformance.check.pipeline import check_stream
from conformance.rules.loader import Loader, Phase, TRANSITIONS
from conformance.rules.catalogue import CATALOGUE, Severity
from conformance.versions import VERSIONS
from strategies.streams import precopy_streams
from wireformat import ram
from wireformat.records import RamBlockInfo, RamRecord

HEADER = b"QEVM\x00\x00\x00\x03"


def cfg(machine=b"pc-i440fx-7.2"):
    return b"\x07" + len(machine).to_bytes(4, "big") + machine


def start(sid, idstr, version, instance=0, kind=1):
    return bytes([kind]) + sid.to_bytes(4, "big") + bytes([len(idstr)]) + idstr + instance.to_bytes(4, "big") + version.to_bytes(4, "big")


def footer(sid):
    return b"\x7e" + sid.to_bytes(4, "big")


def cmd(c, payload=b""):
    return b"\x08" + c.to_bytes(2, "big") + len(payload).to_bytes(2, "big") + payload


def word(addr, flags):
    return (addr | flags).to_bytes(8, "big")


MEM = ram.build_record(RamRecord(addr=0x10000, flags=4, blocks=[RamBlockInfo(name="pc.ram", used_length=0x10000)]))
EOS = word(0, 0x10)


def ram_stream(*page_records: bytes, extra_cmds=b"", tail=b"\x00"):
    return (HEADER + cfg() + extra_cmds + start(2, b"ram", 4) + MEM + EOS + footer(2)
            + b"\x02" + (2).to_bytes(4, "big") + b"".join(page_records) + EOS + footer(2) + tail)


def check(data: bytes, target="10.0"):
    return check_stream(io.BytesIO(data), target=target)


def codes(data: bytes, target="10.0"):
    return [(v.code, v.severity.value) for v in check(data, target).violations]


ZERO_NAMED = word(0, 0x02) + b"\x06pc.ram" + b"\x00"


@given(precopy_streams())
def test_generated_streams_conform_for_their_targets(gen):
    for target in VERSIONS:
        rep = check(gen.data, target)
        if target in gen.targets:
            assert rep.violations == [], (target, [v.one_line() for v in rep.violations])
        else:
            assert rep.rejected


@given(precopy_streams(), st.data())
def test_cut_streams_never_conform(gen, data):
    cut = data.draw(st.integers(8, len(gen.data) - 1))
    rep = check(gen.data[:cut])
    assert rep.violations
    # a cut after EOF only loses the trailer: a destination still completes
    eof_at = gen.data.rindex(b"\x00\x06")
    if cut > eof_at:
        assert not rep.rejected
    else:
        assert rep.rejected


def test_minimal_stream_conforms():
    assert codes(ram_stream(ZERO_NAMED)) == [("missing-vmdescription", "deviation")]


@pytest.mark.parametrize(
    "data, code, text",
    [
        (b"QEVX\x00\x00\x00\x03", "bad-magic", "Not a migration stream"),
        (b"QEVM\x00\x00\x00\x02\x00", "obsolete-version", "obsolete"),
        (b"QEVM\x00\x00\x00\x04\x00", "unsupported-version", "Unsupported migration stream version"),
        (HEADER + start(2, b"ram", 4) + MEM + EOS + footer(2) + b"\x00", "configuration-missing", "Configuration section missing"),
        (HEADER + cfg() + b"\x09", "unknown-section-type", "unknown savevm section type 9"),
        (HEADER + cfg() + b"\x02" + (99).to_bytes(4, "big"), "unknown-section-id", "section 99"),
        (HEADER + cfg() + cmd(0), "unknown-command", "MIG_CMD 0x0 unknown (len 0x0)"),
        (HEADER + cfg() + cmd(12), "unknown-command", "MIG_CMD 0xc unknown"),
        (HEADER + cfg() + cmd(2, b"\x00\x00\x01"), "command-bad-length", "PING received with bad length - expecting 4, got 3"),
        (HEADER + cfg() + cmd(1, b"\x00"), "command-bad-length", "OPEN_RETURN_PATH received with bad length - expecting 0, got 1"),
        (HEADER + cfg() + cmd(8, b"\x00"), "command-bad-length", "(null) received with bad length"),
        (HEADER + cfg() + cmd(2, b"\x00\x00\x00\x01"), "ping-without-return-path", "CMD_PING (0x1) received with no return path"),
        (HEADER + cfg() + cmd(4), "postcopy-wrong-state", "CMD_POSTCOPY_LISTEN in wrong postcopy state (0)"),
        (HEADER + cfg() + cmd(3, b"\x00" * 5), "postcopy-advise-length", "invalid length (5)"),
        (HEADER + cfg() + start(2, b"ram", 3) + MEM + EOS + footer(2), "ram-version", "version 3"),
        (ram_stream(word(0x1000, 0x28) + bytes(4096)), "ram-continue-without-block", "Ack, bad migration stream!"),
        (ram_stream(word(0, 0x02) + b"\x06pc.rax" + b"\x00"), "ram-unknown-block", "Can't find block pc.rax"),
        (ram_stream(ZERO_NAMED, word(0x10000, 0x22) + b"\x00"), "ram-offset-out-of-range", "Illegal RAM offset 10000"),
        (ram_stream(word(0x10000000, 0x02) + b"\x06pc.ram" + b"\x00"), "ram-offset-out-of-range", "Illegal RAM offset 10000000"),
        (ram_stream(word(0, 0x0A) + b"\x06pc.ram"), "ram-unknown-flags", "0xa"),
        (ram_stream(word(0, 0x01)), "ram-unknown-flags", "0x1"),
        (ram_stream(word(0, 0x400)), "ram-unknown-flags", "0x400"),
        (ram_stream(ZERO_NAMED, word(0x1000, 0x22) + b"\x01"), "ram-zero-fill", "Found a zero page with value 1"),
        (ram_stream(ZERO_NAMED, word(0x1000, 0x60) + b"\x02\x00\x02\x00\x00"), "ram-xbzrle", "wrong compression"),
        (ram_stream(ZERO_NAMED, word(0x1000, 0x60) + b"\x01\x00\x02\x00\x00"), "ram-xbzrle", "decode error"),
        (HEADER + cfg() + start(5, b"timer", 2, kind=4) + b"\x00" * 8 + b"\x00", "missing-footer", "Missing section footer for timer"),
        (HEADER + cfg() + start(2, b"ram", 4) + MEM + EOS + footer(3) + b"\x00", "footer-mismatch",
         "Mismatched section id in footer for ram - read 0x3 expected 0x2"),
        (HEADER + cfg() + start(2, b"ram", 4) + MEM + EOS + footer(2), "missing-eof", "without QEMU_VM_EOF"),
        (HEADER + cfg() + start(2, b"ram", 4) + MEM, "truncated", "stream ends"),
    ],
)
def test_destination_rules(data, code, text):
    rep = check(data)
    found = [v for v in rep.violations if v.code == code]
    assert found, [v.one_line() for v in rep.violations]
    assert text in found[0].message
    assert found[0].severity is Severity.REJECT
    assert code in CATALOGUE


def test_offsets_name_the_faulty_record():
    bad = word(0x10000, 0x22) + b"\x00"
    data = ram_stream(ZERO_NAMED, bad)
    v = [v for v in check(data).violations if v.code == "ram-offset-out-of-range"][0]
    assert v.offset == data.index(bad) and v.channel == "main" and v.section == "ram (id 2)"


def test_version_differences_7_2_and_10_0():
    flush = ram_stream(ZERO_NAMED, word(0, 0x200))
    assert ("ram-multifd-flush-unsupported", "reject") in codes(flush, "7.2")
    assert not [c for c in codes(flush, "10.0") if c[0] != "missing-vmdescription"]
    switchover = ram_stream(ZERO_NAMED, extra_cmds=cmd(11))
    assert ("unknown-command", "reject") in codes(switchover, "7.2")
    assert not [c for c in codes(switchover, "10.0") if c[0] != "missing-vmdescription"]
    fill = ram_stream(ZERO_NAMED, word(0x1000, 0x22) + b"\x05")
    assert ("ram-zero-fill", "silent-loss") in codes(fill, "7.2")
    assert ("ram-zero-fill", "reject") in codes(fill, "10.0")
    hook = ram_stream(ZERO_NAMED, word(0, 0x80))
    assert ("ram-hook-without-rdma", "reject") in codes(hook, "7.2")
    assert ("ram-hook-without-rdma", "deviation") in codes(hook, "10.0")


def test_tolerated_things_are_deviations():
    base = ram_stream(ZERO_NAMED, tail=b"\x00" + b"\x06" + (2).to_bytes(4, "big") + b"{}")
    assert codes(base) == []
    assert codes(base + b"garbage") == [("trailing-data", "deviation")]
    assert codes(ram_stream(ZERO_NAMED, tail=b"\x00\x05")) == [("trailing-data", "deviation")]
    dev = start(7, b"timer", 2, kind=4) + b"\x00" * 8 + footer(7)
    dup = (HEADER + cfg() + start(2, b"ram", 4) + MEM + EOS + footer(2) + dev + dev.replace(b"\x00\x00\x00\x07", b"\x00\x00\x00\x08")
           + b"\x00\x06\x00\x00\x00\x02{}")
    assert codes(dup) == [("duplicate-device-section", "deviation")]


def test_continue_survives_section_boundaries():
    # the first record of a PART may continue the block named in an earlier section
    data = ram_stream(ZERO_NAMED).replace(b"\x00\x06\x00", b"\x00\x06\x00")  # no-op, for clarity
    extra = b"\x02" + (2).to_bytes(4, "big") + word(0x2000, 0x22) + b"\x00" + EOS + footer(2)
    data = data[:-1] + extra + b"\x00"
    assert codes(data) == [("missing-vmdescription", "deviation")]


def test_postcopy_command_order():
    advise = cmd(3, (0x1000).to_bytes(8, "big") * 2)
    discard = cmd(6, b"\x00\x06pc.ram\x00" + (0).to_bytes(8, "big") + (0x1000).to_bytes(8, "big"))
    ok = HEADER + cfg() + cmd(1) + advise + discard + cmd(4) + cmd(5) + b"\x00"
    assert codes(ok) == []  # no trailer in postcopy
    assert ("postcopy-wrong-state", "reject") in codes(HEADER + cfg() + cmd(1) + advise + cmd(5) + b"\x00")
    assert ("postcopy-wrong-state", "reject") in codes(HEADER + cfg() + cmd(1) + advise + advise + b"\x00")
    bad_discard = cmd(6, b"\x01\x06pc.ram\x00" + bytes(16))
    assert ("command-malformed", "reject") in codes(HEADER + cfg() + advise + bad_discard + b"\x00")


def test_destination_tables_check_entries_and_versions():
    from conformance.rules.tables import DestinationTables

    ref = HEADER + cfg() + start(7, b"timer", 2, kind=4) + b"\x00" * 8 + footer(7) + b"\x00"
    tables = DestinationTables.from_reference_stream(io.BytesIO(ref))
    assert tables.entries == {("timer", 0): 2}

    def run(version, idstr=b"timer", instance=0):
        data = HEADER + cfg() + start(7, idstr, version, instance, kind=4) + b"\x00" * 8 + footer(7) + b"\x00\x06\x00\x00\x00\x02{}"
        return [(v.code, v.message) for v in check_stream(io.BytesIO(data), tables=tables).violations]

    assert run(2) == []
    assert run(1) == []  # older is fine unless below the VMSD minimum (from -dump-vmstate)
    assert run(3) == [("section-version-too-new", "savevm: unsupported version 3 for 'timer' v2")]
    assert run(2, b"timex")[0][0] == "unknown-section"
    assert run(2, b"timex")[0][1].startswith("Unknown savevm section or instance 'timex' 0. Make sure")
    assert run(2, b"timer", 1)[0][0] == "unknown-section"


def test_transitions_table_is_explicit():
    # every phase but DONE has at least one way forward, and HEADER only takes the header
    phases = {p for p, _ in TRANSITIONS}
    assert phases == set(Phase)
    assert {k for p, k in TRANSITIONS if p is Phase.HEADER} == {__import__("wireformat.records").records.FileHeader}


def test_loader_is_fed_incrementally():
    from wireformat.reader import StreamReader

    loader = Loader("10.0")
    out = []
    for rec in StreamReader(io.BytesIO(ram_stream(ZERO_NAMED, word(0x10000, 0x22) + b"\x00"))):
        out.append((rec.kind, [v.code for v in loader.feed(rec)]))
    assert ("RamRun", ["ram-offset-out-of-range"]) in out
    assert [v.code for v in loader.close()] == ["missing-vmdescription"]


def mapped_ram_stream(pages_present=(0, 3), used=0x10000, page_records=b""):
    """A mapped-ram file as QEMU 10.0 lays it out: block header, bitmap, page region at a
    1 MiB boundary, then the stream goes on after the region."""
    caps = b"\x05\x1aconfiguration/capabilities" + (1).to_bytes(4, "big") + (1).to_bytes(4, "big") + b"\x0amapped-ram"
    head = HEADER + cfg() + caps + start(1, b"ram", 4) + word(used, 0x04) + b"\x06pc.ram" + used.to_bytes(8, "big")
    bitmap_at = len(head) + 28
    pages_at = 1 << 20
    head += struct.pack(">IQQQ", 1, 4096, bitmap_at, pages_at)
    bits = sum(1 << p for p in pages_present).to_bytes(8, "little")
    body = head + bits
    body += bytes(pages_at - len(body)) + b"\xaa" * used
    return body + page_records + EOS + footer(1) + b"\x00"


def test_mapped_ram_file_is_read_through():
    data = mapped_ram_stream()
    rep = check(data)
    assert [v.code for v in rep.violations] == ["missing-vmdescription"]
    assert rep.stats["mapped_ram_pages"] == {"pc.ram": 2}
    assert rep.stats["bytes"] == len(data)
    # 7.2 does not know the capability
    assert ("unknown-capability", "reject") in codes(data, "7.2")
    # a page record in a mapped-ram stream
    bad = mapped_ram_stream(page_records=word(0, 0x02) + b"\x06pc.ram\x00")
    assert ("ram-mapped-ram-flags", "reject") in codes(bad)


def test_mapped_ram_header_that_points_backwards_is_malformed():
    data = bytearray(mapped_ram_stream())
    i = data.index(b"\x06pc.ram") + 7 + 8 + 4 + 8  # the bitmap offset
    data[i : i + 8] = (4).to_bytes(8, "big")
    assert codes(bytes(data))[0] == ("malformed", "reject")


def test_legacy_framing_without_configuration_and_footers():
    # machine types <= 2.3: no CONFIGURATION, no footers — consistent, so it conforms
    legacy = HEADER + start(2, b"ram", 4) + MEM + EOS + b"\x00"
    assert codes(legacy) == []  # machine types <= 2.2 suppress the trailer too
    assert check_stream(io.BytesIO(legacy), machine="pc-i440fx-2.3", target="7.2").violations == []
    # 10.0 has no pc-i440fx-2.3 at all
    assert check_stream(io.BytesIO(legacy), machine="pc-i440fx-2.3").violations[0].code == "machine-type-unsupported"
    # the same bytes to a destination of a newer machine type
    v = check_stream(io.BytesIO(legacy), machine="pc-i440fx-2.4", target="7.2").violations
    assert v[0].code == "configuration-missing"
    # and a modern stream to a legacy destination
    v = check_stream(io.BytesIO(ram_stream(ZERO_NAMED)), machine="pc-i440fx-2.3", target="7.2").violations
    assert v[0].code == "unknown-section-type" and "type 7" in v[0].message


def test_machine_type_is_compared_over_the_received_length():
    data = ram_stream(ZERO_NAMED)
    assert not [v for v in check_stream(io.BytesIO(data), machine="pc-i440fx-7.2").violations if v.code == "machine-type-mismatch"]
    # QEMU compares only as many bytes as it received: a prefix passes (checked on 7.2 and 10.0)
    short = HEADER + cfg(b"pc-i440fx-7") + data[len(HEADER) + len(cfg()):]
    assert not [v for v in check_stream(io.BytesIO(short), machine="pc-i440fx-7.2").violations if v.code == "machine-type-mismatch"]
    v = [v for v in check_stream(io.BytesIO(data), machine="pc-q35-7.2").violations if v.code == "machine-type-mismatch"]
    assert v and v[0].message == "Machine type received is 'pc-i440fx-7.2' and local is 'pc-q35-7.2'"


ADVISE = cmd(3, (0x1000).to_bytes(8, "big") * 2)


def package(inner: bytes) -> bytes:
    return cmd(7, len(inner).to_bytes(4, "big")) + inner


def test_package_ends_at_run_or_eof():
    dev = start(7, b"timer", 2, kind=4) + b"\x00" * 8 + footer(7)
    ok = HEADER + cfg() + cmd(1) + ADVISE + package(cmd(4) + dev + cmd(2, b"\x00\x00\x00\x03") + cmd(5)) + b"\x00"
    rep = check(ok)
    assert rep.violations == [] and rep.stats["postcopy"] == "RUNNING" and rep.stats["status"] == "completed"
    # the nested loader runs out of data: the load fails
    incomplete = HEADER + cfg() + cmd(1) + ADVISE + package(cmd(4) + dev) + b"\x00"
    assert codes(incomplete)[0] == ("package-incomplete", "reject")
    # records after RUN inside the package are never read: even a broken one
    trailing = HEADER + cfg() + cmd(1) + ADVISE + package(cmd(4) + cmd(5) + b"\x09garbage") + b"\x00"
    with pytest.raises(Exception):  # the reader cannot frame 0x09 ...
        from wireformat.reader import StreamReader
        list(StreamReader(io.BytesIO(trailing)))
    trailing = HEADER + cfg() + cmd(1) + ADVISE + package(cmd(4) + cmd(5) + cmd(0)) + b"\x00"
    assert codes(trailing) == [("package-trailing-data", "deviation")]  # ... and MIG_CMD 0 there is not judged
    # an EOF inside ends only the nested loader
    nested_eof = HEADER + cfg() + cmd(1) + ADVISE + package(cmd(4) + b"\x00") + cmd(5) + b"\x00"
    assert codes(nested_eof) == []


def test_recovery_channel():
    from wireformat.constants import MigCmd

    bitmap = cmd(10, b"\x06pc.ram")
    part = b"\x02" + (2).to_bytes(4, "big") + word(0x1000, 0x02) + b"\x06pc.ram\x00" + EOS + footer(2)
    chan = bitmap + cmd(MigCmd.MIG_CMD_POSTCOPY_RESUME) + part + b"\x03" + (2).to_bytes(4, "big") + EOS + footer(2) + b"\x00"
    # alone, the PART/END of a section the old channel started cannot be framed
    rep = check_stream(io.BytesIO(chan), recovery=True)
    assert [v.code for v in rep.violations] == ["unknown-section-id"]
    # with the interrupted main channel it resumes
    old = HEADER + cfg() + cmd(1) + ADVISE + start(2, b"ram", 4) + MEM + EOS + footer(2) + package(cmd(4) + cmd(5))
    rep = check_stream(io.BytesIO(chan), recovery=True, previous=io.BytesIO(old))
    assert rep.violations == [] and rep.stats["status"] == "completed"
    # RESUME outside recovery, on the old channel itself, is tolerated
    assert codes(old + cmd(9) + b"\x00") == [("recovery-command-outside-recovery", "deviation")]
    # the same commands on a normal stream: outside recovery (tolerated)
    normal = ram_stream(ZERO_NAMED, extra_cmds=bitmap + cmd(9))
    assert [c for c, _ in codes(normal)] == ["recovery-command-outside-recovery", "recovery-command-outside-recovery",
                                              "missing-vmdescription"]
    bad = ram_stream(ZERO_NAMED, extra_cmds=cmd(10, b"\x00"))
    assert ("command-malformed", "reject") in codes(bad)


@pytest.mark.parametrize("target", ["7.2", "10.0"])
def test_builtin_tables_know_each_versions_sections(target):
    from conformance.rules.tables import builtin_tables

    t = builtin_tables(target)
    assert t.judge("timer", 0, 2) is None and t.judge("cpu", 0, 12) is None
    assert t.judge("0000:00:03.0/e1000", 0, 2) is None  # a PCI path, then the VMSD name
    assert t.judge("0000:00:04.0/1/usb-ptr", 0, 1) is None
    assert t.judge("0000:00:03.0/e1000", 0, 3).code == "section-version-too-new"
    assert t.judge("timer", 0, 3).message == "savevm: unsupported version 3 for 'timer' v2"
    assert t.judge("timex", 0, 1).code == "unknown-section"
    assert t.judge("0000:00:05.0/vfio", 0, 1) is None  # VFIO devices register their own sections


def test_return_path_is_judged_as_the_source_judges_it():
    from conformance.rules.returnpath import ReturnPathModel
    from wireformat.returnpath import iter_messages

    main = ram_stream(ZERO_NAMED, extra_cmds=cmd(1) + cmd(2, b"\x00\x00\x00\x01") + cmd(2, b"\x00\x00\x00\x02"))
    rp = bytes.fromhex("00020004 00000002  00020004 00000001  00030013 0000000000001000 00001000 06 70632e72616d"
                       "  0004000c 00000000000ff000 00001000  00010004 00000000")
    rep = check_stream(io.BytesIO(main), return_path=io.BytesIO(rp))
    # PONGs out of order are fine; the second page request runs past pc.ram (0x10000 bytes).
    # The return path is judged after the main stream's records, before its end is.
    assert [(v.code, v.channel) for v in rep.violations] == [
        ("rp-bad-page-request", "return-path"), ("missing-vmdescription", "main")]
    assert rep.stats["return_path"]["MIG_RP_MSG_PONG"] == 2
    assert check_stream(io.BytesIO(main)).stats["return_path"] is None

    model = ReturnPathModel("10.0")
    for m in iter_messages(io.BytesIO(bytes.fromhex("00010004 00000005 00020004 00000009"))):
        model.feed(m)
    assert [v.code for v in model.violations] == ["rp-shut-error", "rp-after-shut", "rp-pong-unexpected"]


def test_a_channel_lost_in_postcopy_pauses_rather_than_fails():
    running = HEADER + cfg() + cmd(1) + ADVISE + package(cmd(4) + cmd(5)) + start(2, b"ram", 4) + MEM + EOS + footer(2)
    rep = check(running)  # cut after RUN: no EOF
    assert [v.code for v in rep.violations] == ["missing-eof"] and rep.stats["status"] == "postcopy-paused"
    assert "postcopy-paused" in rep.violations[0].message
    assert check(ram_stream(ZERO_NAMED)[:-1]).stats["status"] == "failed"  # precopy: it fails


@pytest.mark.parametrize("target, text", [("7.2", "waits for a COLO checkpoint that never comes"),
                                          ("10.0", "ENABLE_COLO command come in migration stream, but x-colo "
                                                   "capability is not set")])
def test_enable_colo_needs_the_x_colo_capability(target, text):
    """Both found by fuzzing real destinations: 10.0 refuses ENABLE_COLO without x-colo, 7.2
    takes it and hangs after the load; a destination with x-colo takes it."""
    from conformance.rules.profile import configure

    colo = ram_stream(ZERO_NAMED, extra_cmds=cmd(8))  # MIG_CMD_ENABLE_COLO, no payload
    found = [v for v in check(colo, target).violations if v.code == "colo-without-capability"]
    assert len(found) == 1 and found[0].severity.value == "reject" and text in found[0].message
    assert "colo-without-capability" not in [c for c, _ in codes(colo, configure(target, capabilities={"x-colo": True}))]
