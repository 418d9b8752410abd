"""Who owns which stream state: the reader frames (its section table, whether the stream has
footers), the Loader judges (the destination's bindings of section ids, its footer
expectation). The two tables agree on what QEMU writes and part where the destination skips
what the reader frames; the Loader judges the same records whether a reader made them or not."""

import io

from conformance.check.pipeline import check_stream
from conformance.rules.loader import Loader
from wireformat.constants import SectionType as T
from wireformat.mainstream import build_record
from wireformat.reader import StreamReader
from wireformat.records import (
    Configuration,
    DeviceState,
    Eof,
    FileHeader,
    RamBlockInfo,
    RamRecord,
    SectionFooter,
    SectionHeader,
)

from tests.test_loader import ADVISE, HEADER, cfg, cmd, footer, package, start

EOS = dict(addr=0, flags=0x10)


def _records():
    """A RAM section over three parts (a footer naming another id, a PART after END) and a
    device section: every violation names a section through its id."""
    ram = [SectionHeader(section_type=T.QEMU_VM_SECTION_START, section_id=2, idstr="ram", instance_id=0, version_id=4),
           RamRecord(addr=0x10000, flags=0x4, blocks=[RamBlockInfo(name="pc.ram", used_length=0x10000)]),
           RamRecord(**EOS), SectionFooter(section_id=2),
           SectionHeader(section_type=T.QEMU_VM_SECTION_PART, section_id=2),
           RamRecord(addr=0x1000, flags=0x2, block="pc.ram", fill=0), RamRecord(**EOS), SectionFooter(section_id=3),
           SectionHeader(section_type=T.QEMU_VM_SECTION_END, section_id=2), RamRecord(**EOS), SectionFooter(section_id=2),
           SectionHeader(section_type=T.QEMU_VM_SECTION_PART, section_id=2), RamRecord(**EOS), SectionFooter(section_id=2)]
    timer = [SectionHeader(section_type=T.QEMU_VM_SECTION_FULL, section_id=0, idstr="timer", instance_id=0, version_id=2),
             DeviceState(section_id=0, idstr="timer", data=bytes(24)), SectionFooter(section_id=0)]
    return [FileHeader(magic=0x5145564D, version=3), Configuration(machine_type="pc-i440fx-7.2"), *ram, *timer, Eof()]


def _judged(violations):
    return [(v.code, v.message, v.section) for v in violations]


def test_records_built_directly_are_judged_as_the_readers_records():
    recs = _records()
    data = b"".join(build_record(r, page_size=4096) for r in recs)
    via_reader = check_stream(io.BytesIO(data), target="10.0").violations
    loader = Loader("10.0")
    for r in recs:  # no reader: the Loader resolves every id by its own bindings
        loader.feed(r)
    loader.close()
    assert _judged(loader.violations) == _judged(via_reader)
    assert [(v.code, v.section) for v in via_reader] == [
        ("footer-mismatch", "ram (id 2)"), ("section-not-open", None), ("missing-vmdescription", None)]
    assert via_reader[0].message == "Mismatched section id in footer for ram - read 0x3 expected 0x2"
    assert via_reader[1].message == "SECTION_PART for section ram (id 2) that is not open"


def test_the_destination_binds_only_what_it_reads_the_reader_frames_everything():
    # a section opened inside a package after POSTCOPY_RUN: the reader frames it (and so knows
    # its id), the destination never reads it: a later PART of that id is unknown to it
    body = bytes(24)
    tail = start(9, b"timer", 2) + body + footer(9)
    part = b"\x03" + (9).to_bytes(4, "big") + body + footer(9)
    data = HEADER + cfg() + cmd(1) + ADVISE + package(cmd(4) + cmd(5) + tail) + part + b"\x00"
    reader = StreamReader(io.BytesIO(data))
    loader = Loader("10.0")
    for rec in reader:
        loader.feed(rec)
    loader.close(reader.b.offset())
    assert 9 in reader.sections and 9 not in loader.bindings
    assert _judged(loader.violations)[1:] == [("unknown-section-id", "Unknown savevm section 9", "? (id 9)")]

