"""Streaming reader: bytes of one main-stream channel in, typed records out.

Memory is bounded by the buffer size whatever the stream length or what a length field
claims: page payloads are memoryviews into the buffer (valid until the next record is
requested; copy them to keep them), and every length read from the wire is checked
against a cap before anything is allocated for it.

The reader frames; it does not judge. When the bytes cannot be framed any further
(truncation, an unknown record type, an unknown RAM flag combination) it raises a
`wireformat.errors.DecodeError` subclass naming channel, offset and section — what a
destination would also stop at.
"""

from __future__ import annotations

import struct
import sys
from array import array
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator

from . import ram as ramcodec
from .budgets import BUDGETS
from .commands import RELEASED, CommandSet
from .constants import (
    MIG_CMD_FIXED_LEN,
    QEMU_VM_FILE_MAGIC,
    RAM_SECTION_IDSTR,
    SUBSECTION_CAPABILITIES,
    SUBSECTION_TARGET_PAGE_BITS,
    SUBSECTION_UUID,
    MigCmd,
    RamSaveFlag as F,
    SectionType as T,
)
from .records import (
    MAIN,
    RamBlockInfo,
    Command,
    ConfigSubsection,
    Configuration,
    DeviceState,
    Eof,
    FileHeader,
    PackageEnd,
    RamRecord,
    RamRun,
    Record,
    SectionFooter,
    SectionHeader,
    TrailingData,
    VmDescription,
)
from .errors import (
    ConfigurationMalformed,
    DecodeError,
    HostileLength,
    Malformed,
    MissingFooter,
    PackagedTooLarge,
    Truncated,
    UnknownRamFlags,
    UnknownSectionId,
    UnknownSectionType,
)
from .window import Window

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32x2 = struct.Struct(">II")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_HDR5 = struct.Struct(">BI")  # type byte + be32 section id / footer

PAGE = int(F.RAM_SAVE_FLAG_PAGE)
ZERO = int(F.RAM_SAVE_FLAG_ZERO)
CONT = int(F.RAM_SAVE_FLAG_CONTINUE)
EOS = int(F.RAM_SAVE_FLAG_EOS)
MEM_SIZE = int(F.RAM_SAVE_FLAG_MEM_SIZE)
PAGE_CONT = PAGE | CONT
_BARE_KINDS = frozenset({int(F.RAM_SAVE_FLAG_HOOK), int(F.RAM_SAVE_FLAG_MULTIFD_FLUSH)})  # the word alone
ZERO_CONT = ZERO | CONT
FOOTER = int(T.QEMU_VM_SECTION_FOOTER)

_LITTLE = sys.byteorder == "little"

MAX_DEVICE_BODY = BUDGETS.device_body
MAX_VMDESCRIPTION = BUDGETS.vmdescription
MAX_MACHINE_NAME = BUDGETS.machine_name
MAX_COMPRESSED_PAGE = BUDGETS.compressed_page


@dataclass(slots=True)
class SectionInfo:
    section_id: int
    idstr: str
    instance_id: int
    version_id: int

    def describe(self) -> str:
        return f"{self.idstr} (id {self.section_id})"


# A device body whose VMSD is known: (section, body window) -> length of the body, or None.
BodySizer = Callable[[SectionInfo, memoryview], "int | None"]


class StreamReader:
    """Iterate the records of one main-stream channel.

    Parameters: `commands` (the command-id space, e.g. with SEND_SRC_DOWNTIME opted in),
    `body_sizer` (decodes device bodies from a VMSD description, see wireformat.vmstate),
    `window` (buffer size; also the largest device body framed by footer scanning).
    `headerless=True` reads a recovery or preempt channel: records only, no file header.
    """

    def __init__(
        self,
        src: BinaryIO,
        channel: str = MAIN,
        *,
        commands: CommandSet = RELEASED,
        body_sizer: BodySizer | None = None,
        window: int = 8 << 20,
        headerless: bool = False,
        known_sections: dict[int, SectionInfo] | None = None,
    ):
        self.b = Window(src, max(window, 1 << 16))
        self.channel = channel
        self.commands = commands
        self.body_sizer = body_sizer
        self.headerless = headerless
        # The stream's framing state, owned here: section id -> the SectionInfo its START or FULL
        # opened (what a PART/END carries, RAM records or a device body; which ids may start
        # the record after a footer-less body). A recovery channel goes on with the sections its
        # interrupted main channel opened. (The Loader keeps the destination's bindings.)
        self.sections: dict[int, SectionInfo] = dict(known_sections or {})
        self.ram_params = dict(ramcodec.DEFAULT_PARAMS)
        self.current: SectionInfo | None = None
        self._package_end: list[int] = []
        self._byte6_table: tuple[int, bytes] | None = None
        self._current_type = 0
        self.configured = False  # a CONFIGURATION record was read
        self._ignore_shared_tried = False
        # whether this stream puts footers after sections (device bodies are framed by them),
        # learnt after the first RAM section; what a destination expects is the Loader's
        self.footers: bool | None = None

    # -- public -------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Record]:
        try:
            yield from self._stream()
        except Truncated as e:
            if e.message:
                raise  # placed already
            raise self._err("stream ends in the middle of a record", cls=Truncated) from None

    def _err(self, msg: str, offset: int | None = None, cls: type[DecodeError] = Malformed) -> DecodeError:
        return cls(
            msg,
            channel=self.channel,
            offset=self.b.offset() if offset is None else offset,
            section=self.current.describe() if self.current else None,
        )

    # -- top level ------------------------------------------------------------------------
    def _stream(self) -> Iterator[Record]:
        b = self.b
        if not self.headerless:
            if not b.fill(8):
                raise self._err(f"stream is {b.avail()} bytes long: too short for the file header", cls=Truncated)
            magic, version = struct.unpack_from(">II", b.buf, b.pos)
            yield FileHeader(offset=0, channel=self.channel, magic=magic, version=version)
            b.pos += 8
            if magic != QEMU_VM_FILE_MAGIC:
                return  # not a migration stream: nothing further can be framed
            if b.fill(1) and b.buf[b.pos] == T.QEMU_VM_CONFIGURATION:
                conf = self._configuration()
                self.configured = True
                caps = conf.capabilities
                self.ram_params["ignore_shared"] = "x-ignore-shared" in caps
                self.ram_params["mapped_ram"] = conf.mapped_ram
                self.ram_params["page_size"] = conf.page_size
                yield conf
        while True:
            if self._package_end and b.offset() >= self._package_end[-1]:
                end = self._package_end.pop()
                if b.offset() > end:
                    raise self._err(f"a record crosses the end of the packaged data at {end}")
                yield PackageEnd(offset=end, channel=self.channel, depth=len(self._package_end), length=0)
                continue
            if not b.fill(1):
                if self._package_end:
                    raise Truncated()
                return  # EOF missing: the checker reports it
            t = b.buf[b.pos]
            if t == T.QEMU_VM_EOF and not self._package_end:
                yield Eof(offset=b.offset(), channel=self.channel)
                b.pos += 1
                yield from self._trailer()
                return
            if t in (T.QEMU_VM_SECTION_START, T.QEMU_VM_SECTION_FULL, T.QEMU_VM_SECTION_PART, T.QEMU_VM_SECTION_END):
                yield from self._section(t)
            elif t == T.QEMU_VM_COMMAND:
                yield from self._command()
            elif t == T.QEMU_VM_EOF:
                yield Eof(offset=b.offset(), channel=self.channel, depth=len(self._package_end))
                b.pos += 1
            else:
                raise self._err(f"unknown savevm section type {t}", cls=UnknownSectionType)

    def _depth(self) -> int:
        return len(self._package_end)

    def _configuration(self) -> Record:
        b = self.b
        off = b.offset()
        b.fill(5)
        if b.avail() >= 5:
            (n,) = _U32.unpack_from(b.buf, b.pos + 1)
            if n > MAX_MACHINE_NAME:
                raise self._err(f"configuration machine-type length {n} exceeds {MAX_MACHINE_NAME}", cls=HostileLength)
        fast = self._configuration_fast(off)
        if fast is not None:
            return fast
        # anything the hand-written reading cannot settle: through the construct definition
        from construct import ConstructError, ExplicitError

        from .mainstream import ConfigurationStruct, configuration_from_container

        want = 4096
        while True:
            b.fill(want)
            # `want` bytes, not the whole read window (which may be a large map)
            window = bytes(b.mv[b.pos + 1 : min(b.end, b.pos + want)])
            last = b.eof and b.pos + want >= b.end  # the window holds the rest of the stream
            try:
                c = ConfigurationStruct.parse(window)
                used = len(ConfigurationStruct.build(c))
            except ExplicitError:  # a subsection the configuration does not have
                raise self._err("configuration record has an unknown subsection", cls=ConfigurationMalformed) from None
            except ConstructError:
                if last or want >= 1 << 20:
                    raise self._err("configuration record does not decode", cls=Truncated if last else ConfigurationMalformed)
                want *= 4
                continue
            if used == len(window) and not last and want < 1 << 20:
                want *= 4  # the subsection list may go on past the window
                continue
            b.pos += 1 + used
            return configuration_from_container(c, offset=off, channel=self.channel)

    def _configuration_fast(self, off: int) -> Configuration | None:
        """The configuration record read by hand (mainstream.ConfigurationStruct is its
        definition; tests/test_reader.py proves them equal), or None when it cannot be settled
        from the first 4 KiB: truncated, an unknown subsection, or the window ends before
        something that is not a subsection follows."""
        b = self.b
        b.fill(4096)
        buf, p, end = b.buf, b.pos + 1, b.end
        if p + 4 > end:
            return None
        (n,) = _U32.unpack_from(buf, p)
        p += 4
        if p + n > end:
            return None
        machine = bytes(buf[p : p + n]).decode("latin-1")
        p += n
        subs = []
        while p < end and buf[p] == T.QEMU_VM_SUBSECTION:
            if p + 2 > end or p + 6 + buf[p + 1] > end:
                return None
            k = buf[p + 1]
            name = bytes(buf[p + 2 : p + 2 + k]).decode("latin-1")
            (ver,) = _U32.unpack_from(buf, p + 2 + k)
            p += 6 + k
            if name == SUBSECTION_TARGET_PAGE_BITS:
                if p + 4 > end:
                    return None
                (value,) = _U32.unpack_from(buf, p)
                p += 4
            elif name == SUBSECTION_CAPABILITIES:
                if p + 4 > end:
                    return None
                (count,) = _U32.unpack_from(buf, p)
                p += 4
                value = []
                for _ in range(count):
                    if p >= end or p + 1 + buf[p] > end:
                        return None
                    value.append(bytes(buf[p + 1 : p + 1 + buf[p]]).decode("latin-1"))
                    p += 1 + buf[p]
            elif name == SUBSECTION_UUID:
                if p + 16 > end:
                    return None
                value = bytes(buf[p : p + 16])
                p += 16
            else:
                return None
            subs.append(ConfigSubsection(name=name, version_id=ver, value=value))
        if p >= end:
            return None  # more subsections may follow past the window
        b.pos = p
        return Configuration(offset=off, channel=self.channel, machine_type=machine, subsections=subs)

    def _trailer(self) -> Iterator[Record]:
        b = self.b
        if not b.fill(1):
            return
        off = b.offset()
        if b.buf[b.pos] == T.QEMU_VM_VMDESCRIPTION and b.fill(5):
            (n,) = _U32.unpack_from(b.buf, b.pos + 1)
            if n <= MAX_VMDESCRIPTION:
                b.pos += 5
                parts, left = [], n
                while left and b.fill(1):
                    k = min(left, b.avail())
                    parts.append(bytes(b.mv[b.pos : b.pos + k]))
                    b.pos += k
                    left -= k
                yield VmDescription(offset=off, channel=self.channel, json=b"".join(parts), announced=n if left else None)
        if b.fill(1):
            off = b.offset()
            head = bytes(b.mv[b.pos : min(b.end, b.pos + 16)])  # not the stale buffer beyond the end
            total = 0
            while b.fill(1):
                total += b.avail()
                b.pos = b.end
            yield TrailingData(offset=off, channel=self.channel, length=total, head=head)

    # -- commands ------------------------------------------------------------------------
    def _command(self) -> Iterator[Record]:
        b = self.b
        off = b.offset()
        b.need(5)
        cmd, n = struct.unpack_from(">HH", b.buf, b.pos + 1)
        b.pos += 5
        data = b.take_bytes(n)
        args = self.commands.decode(cmd, data)
        yield Command(offset=off, channel=self.channel, depth=self._depth(), cmd=cmd, data=data, args=args)
        if cmd == MigCmd.MIG_CMD_POSTCOPY_ADVISE and len(data) == 16:
            self.ram_params["postcopy_advised"] = True
        if cmd == MigCmd.MIG_CMD_PACKAGED and args is not None and cmd != self.commands.send_src_downtime_id:
            end = b.offset() + args["length"]
            if self._package_end and end > self._package_end[-1]:
                raise self._err("packaged data extends past the package that holds it", offset=off, cls=PackagedTooLarge)
            self._package_end.append(end)

    # -- sections ------------------------------------------------------------------------
    def _section(self, t: int) -> Iterator[Record]:
        b = self.b
        off = b.offset()
        depth = self._depth()
        if t in (T.QEMU_VM_SECTION_START, T.QEMU_VM_SECTION_FULL):
            b.need(6)
            namelen = b.buf[b.pos + 5]
            b.need(1 + 4 + 1 + namelen + 8)
            # by hand: be32 id, counted idstr, be32 instance, be32 version (FullSectionHeaderStruct)
            buf, p = b.buf, b.pos
            (sid,) = _U32.unpack_from(buf, p + 1)
            idstr = bytes(buf[p + 6 : p + 6 + namelen]).decode("latin-1")
            inst, ver = _U32x2.unpack_from(buf, p + 6 + namelen)
            b.pos = p + 14 + namelen
            info = SectionInfo(sid, idstr, inst, ver)
            self.sections[sid] = info
            yield SectionHeader(
                offset=off, channel=self.channel, depth=depth, section_type=t, section_id=sid,
                idstr=idstr, instance_id=inst, version_id=ver,
            )
        else:
            b.need(5)
            (sid,) = _U32.unpack_from(b.buf, b.pos + 1)
            b.pos += 5
            yield SectionHeader(offset=off, channel=self.channel, depth=depth, section_type=t, section_id=sid)
            info = self.sections.get(sid)
            if info is None:
                # The payload format is unknown; a destination stops here too.
                raise self._err(f"unknown savevm section {sid}", offset=off, cls=UnknownSectionId)
        self.current = info
        self._current_type = t
        if info.idstr == RAM_SECTION_IDSTR and info.instance_id == 0:
            yield from self._ram_records(depth)
        else:
            yield self._device_body(info, depth)
        if b.fill(5) and b.buf[b.pos] == FOOTER:
            (fid,) = _U32.unpack_from(b.buf, b.pos + 1)
            yield SectionFooter(offset=b.offset(), channel=self.channel, depth=depth, section_id=fid)
            b.pos += 5
            self.footers = True
        elif self.footers is None and info.idstr == RAM_SECTION_IDSTR:
            # a RAM section frames itself: no footer after it means a footer-less stream
            # (machine types <= 2.3), whose device bodies must be framed another way
            self.footers = False
        self.current = None

    def _device_body(self, info: SectionInfo, depth: int) -> DeviceState:
        b = self.b
        off = b.offset()
        if self.body_sizer is not None and self._current_type == T.QEMU_VM_SECTION_FULL:
            b.fill(min(b.size, MAX_DEVICE_BODY))  # a description-driven body must fit the window
            size = self.body_sizer(info, b.mv[b.pos : b.end])
            if size is not None:
                data = bytes(b.mv[b.pos : b.pos + size])
                b.pos += size
                return DeviceState(offset=off, channel=self.channel, depth=depth, section_id=info.section_id, idstr=info.idstr, data=data, framed_by="description")
        if self.footers is False:
            size, how = self._scan_next_record(info), "next-header"
        else:
            size, how = self._scan_footer(info), "footer"
        data = bytes(b.mv[b.pos : b.pos + size])
        b.pos += size
        return DeviceState(offset=off, channel=self.channel, depth=depth, section_id=info.section_id, idstr=info.idstr, data=data, framed_by=how)

    def _scan_next_record(self, info: SectionInfo) -> int:
        """Length of a body in a stream without footers and without a description: up to
        the next full section header (a new section id, a printable idstr, small instance
        and version), a PART/END of a known iterable section, or the final EOF. A heuristic,
        as without footers only a description frames a body exactly."""
        b = self.b
        limit = min(b.size, MAX_DEVICE_BODY)
        b.fill(limit)
        end = b.end
        for i in range(b.pos, end):
            t = b.buf[i]
            if t == T.QEMU_VM_EOF and b.eof and (i + 1 == end or b.buf[i + 1] == T.QEMU_VM_VMDESCRIPTION):
                if i + 1 == end or self._plausible_trailer(i + 1):
                    return i - b.pos
            elif t in (T.QEMU_VM_SECTION_START, T.QEMU_VM_SECTION_FULL) and i + 6 <= end:
                sid = _U32.unpack_from(b.buf, i + 1)[0]
                n = b.buf[i + 5]
                if sid in self.sections or not 0 < n or i + 14 + n > end:
                    continue
                name = bytes(b.mv[i + 6 : i + 6 + n])
                inst, ver = struct.unpack_from(">II", b.buf, i + 6 + n)
                if all(0x20 < c < 0x7F for c in name) and inst < 0x10000 and ver < 0x1000:
                    return i - b.pos
            elif t in (T.QEMU_VM_SECTION_PART, T.QEMU_VM_SECTION_END) and i + 5 <= end:
                sid = _U32.unpack_from(b.buf, i + 1)[0]
                known = self.sections.get(sid)
                if known is not None and known.idstr == RAM_SECTION_IDSTR and i + 13 <= end:
                    (w,) = _U64.unpack_from(b.buf, i + 5)  # a RAM record must follow
                    if (w & (self.ram_params["page_size"] - 1) & ~CONT) in ramcodec.KNOWN_KINDS:
                        return i - b.pos
        raise self._err(f"cannot find where section {info.idstr} ends: no footers, no description, no next section "
                        f"within {limit} bytes", cls=MissingFooter)

    def _plausible_trailer(self, at: int) -> bool:
        b = self.b
        if at + 6 > b.end:
            return False
        n = _U32.unpack_from(b.buf, at + 1)[0]
        return at + 5 + n == b.end and b.buf[at + 5] == ord("{")

    def _scan_footer(self, info: SectionInfo) -> int:
        """Length of the body: up to the first footer for this section that is followed
        by something that can start the next record — or, if none is, the first footer
        at all (the destination reads it and then fails on what follows, as we will)."""
        b = self.b
        needle = bytes([FOOTER]) + _U32.pack(info.section_id)
        limit = min(b.size, MAX_DEVICE_BODY)
        b.fill(min(limit, 1 << 16))
        rel = 0  # searched up to here, relative to pos (pos is stable, the buffer may slide)
        first = -1
        while True:
            i = b.buf.find(needle, b.pos + rel, b.end)
            while i >= 0 and (i + 64 <= b.end or b.eof):
                if first < 0:
                    first = i - b.pos
                if self._plausible_next(i + 5):
                    return i - b.pos
                i = b.buf.find(needle, i + 1, b.end)
            if b.eof or b.avail() >= limit:
                if first >= 0:
                    return first
                what = "before the stream ends" if b.eof else f"within {limit} bytes"
                raise self._err(f"Missing section footer for {info.idstr}: none {what}", cls=MissingFooter)
            rel = (i - b.pos) if i >= 0 else max(0, b.avail() - 4)
            b.fill(min(limit, b.avail() + (1 << 16)))

    def _plausible_next(self, at: int) -> bool:
        b = self.b
        if at >= b.end:
            return b.eof
        t = b.buf[at]
        if t == T.QEMU_VM_EOF:
            if self._package_end:
                return True
            # the stream's EOF: the trailer or the end of the stream must follow
            if at + 1 >= b.end:
                return b.eof
            return b.buf[at + 1] == T.QEMU_VM_VMDESCRIPTION
        if t in (T.QEMU_VM_SECTION_PART, T.QEMU_VM_SECTION_END):
            return at + 5 > b.end or _U32.unpack_from(b.buf, at + 1)[0] in self.sections
        if t in (T.QEMU_VM_SECTION_START, T.QEMU_VM_SECTION_FULL):
            if at + 6 > b.end:
                return True
            n = b.buf[at + 5]
            name = bytes(b.mv[at + 6 : min(at + 6 + n, b.end)])
            return n > 0 and all(0x20 <= c < 0x7F for c in name)
        if t == T.QEMU_VM_COMMAND:
            if at + 5 > b.end:
                return b.eof
            cmd, n = struct.unpack_from(">HH", b.buf, at + 1)
            fixed = MIG_CMD_FIXED_LEN.get(cmd)
            return 0 < cmd < 32 and (fixed is None or fixed == n)
        return False

    # -- RAM -----------------------------------------------------------------------------
    def _ram_records(self, depth: int) -> Iterator[RamRecord]:
        b = self.b
        ch = self.channel
        params = self.ram_params
        page_size = params["page_size"]
        page_rec = 8 + page_size
        unpack_word = _U64.unpack_from
        fmask = page_size - 1
        amask = ~fmask
        while True:
            if b.end - b.pos < page_rec and not b.fill(page_rec):
                b.need(8)
            buf = b.buf
            pos = b.pos
            (word,) = unpack_word(buf, pos)
            flags = word & fmask
            # Fast path: runs of CONTINUE pages / zero pages make up almost all of a stream.
            if flags == PAGE_CONT and b.end - pos >= page_rec:
                yield self._run(pos, page_rec, PAGE_CONT, depth)
                continue
            if flags == ZERO_CONT and b.end - pos >= 9:
                yield self._run(pos, 9, ZERO_CONT, depth)
                continue
            if flags == EOS:
                b.pos = pos + 8
                yield RamRecord(offset=b.base + pos, channel=ch, depth=depth, addr=word & amask, flags=flags)
                return
            kind = flags & ~CONT
            if kind == MEM_SIZE and params["mapped_ram"]:
                yield self._mem_size_mapped_ram(pos, depth)
                continue
            if kind not in ramcodec.KNOWN_KINDS:
                raise self._err(f"Unknown combination of migration flags: {flags:#x}", offset=b.base + pos, cls=UnknownRamFlags)
            if kind == PAGE:  # named page (first of a block)
                b.need(9)
                n = b.buf[b.pos + 8]
                total = 9 + n + page_size
                b.need(total)
                pos = b.pos  # the window may have moved: pos is still the record's start
                block = bytes(b.mv[pos + 9 : pos + 9 + n]).decode("latin-1")
                b.pos = pos + total
                yield RamRecord(offset=b.base + pos, channel=ch, depth=depth, addr=word & amask, flags=flags, block=block,
                                data=b.mv[pos + 9 + n : pos + total])
                continue
            if kind == ZERO:
                b.need(9)
                n = b.buf[b.pos + 8]
                b.need(10 + n)
                pos, buf = b.pos, b.buf  # the window may have moved
                block = bytes(b.mv[pos + 9 : pos + 9 + n]).decode("latin-1")
                b.pos = pos + 10 + n
                yield RamRecord(offset=b.base + pos, channel=ch, depth=depth, addr=word & amask, flags=flags, block=block,
                                fill=buf[pos + 9 + n])
                continue
            yield self._ram_generic(pos, depth)

    @property
    def _byte6_flags(self) -> bytes:
        """byte -> 1 when it has flag bits set, for byte 6 of a record word."""
        high = (self.ram_params["page_size"] - 1) >> 8
        if self._byte6_table is None or self._byte6_table[0] != high:
            self._byte6_table = (high, bytes(1 if i & high else 0 for i in range(256)))
        return self._byte6_table[1]

    def _run(self, pos: int, stride: int, flags: int, depth: int) -> RamRun:
        """The longest run of `flags` records of `stride` bytes starting at pos within the
        buffered bytes, found with C-speed slicing instead of a per-record loop."""
        b = self.b
        buf = b.buf
        n = (b.end - pos) // stride
        stop = pos + n * stride
        # flags are the bits below the page size: all of byte 7, the low bits of byte 6
        lows = buf[pos + 7 : stop : stride]
        n -= len(lows.lstrip(bytes([flags])))
        if n > 1:
            bad = buf[pos + 6 : pos + n * stride : stride].translate(self._byte6_flags).find(1)
            if bad >= 0:
                n = max(bad, 1)
        stop = pos + n * stride
        if stride % 8 == 0:  # the words at a fixed stride, gathered in C
            words = array("Q", b.mv[pos:stop].cast("Q")[:: stride // 8].tobytes())
        else:
            words = array("Q", b"".join(buf[i : i + 8] for i in range(pos, stop, stride)))
        if _LITTLE:
            words.byteswap()
        b.pos = stop
        return RamRun(offset=b.base + pos, channel=self.channel, depth=depth, flags=flags, count=n, stride=stride,
                      words=words, region=b.mv[pos:stop], page_size=self.ram_params["page_size"])

    def _ram_fast(self, pos: int, word: int, depth: int) -> RamRecord | None:
        """HOOK, MULTIFD_FLUSH and a plain MEM_SIZE (no postcopy page sizes, no mapped-ram)
        read by hand, or None to go through the construct definition (which also places the
        errors): ramcodec.RamRecordStruct is the definition, tests/test_reader.py proves them
        equal."""
        b = self.b
        params = self.ram_params
        fmask = params["page_size"] - 1
        flags = word & fmask
        kind = flags & ~CONT
        if kind in _BARE_KINDS:
            b.pos = pos + 8
            return RamRecord(offset=b.base + pos, channel=self.channel, depth=depth, addr=word & ~fmask, flags=flags)
        if kind != MEM_SIZE or params["postcopy_advised"] or params["mapped_ram"]:
            return None
        total = word & ~fmask
        shared = params["ignore_shared"]
        b.fill(min(b.size, 1 << 16))
        pos = b.pos  # the record's start, wherever the window now is
        off = b.base + pos
        buf, p, end = b.buf, pos + 8, b.end
        blocks, seen = [], 0
        while seen < total:
            if p >= end or p + 9 + buf[p] + (8 if shared else 0) > end:
                return None
            n = buf[p]
            name = bytes(buf[p + 1 : p + 1 + n]).decode("latin-1")
            (used,) = _U64.unpack_from(buf, p + 1 + n)
            p += 9 + n
            if used == 0 or seen + used > total:
                return None
            info = RamBlockInfo(name=name, used_length=used)
            if shared:
                (info.mr_addr,) = _U64.unpack_from(buf, p)
                p += 8
            blocks.append(info)
            seen += used
        b.pos = p
        return RamRecord(offset=off, channel=self.channel, depth=depth, addr=total, flags=flags, blocks=blocks)

    def _ram_generic(self, pos: int, depth: int) -> RamRecord:
        """Any other RAM record, through the construct definition."""
        b = self.b
        rec = self._ram_fast(pos, _U64.unpack_from(b.buf, pos)[0], depth)
        if rec is not None:
            return rec
        from construct import ConstructError

        off = b.base + pos
        (word,) = _U64.unpack_from(b.buf, pos)
        kind = word & (self.ram_params["page_size"] - 1) & ~CONT
        if kind == F.RAM_SAVE_FLAG_COMPRESS_PAGE:
            named = 0 if word & CONT else 1 + b.buf[b.pos + 8] if b.fill(9) else 0
            b.need(8 + named + 4)
            (n,) = _U32.unpack_from(b.buf, b.pos + 8 + named)
            if n > MAX_COMPRESSED_PAGE:
                raise self._err(f"compressed page length {n} is out of range", offset=off, cls=HostileLength)
        want = 4096 + 512
        while True:
            have = b.fill(want)
            pos = b.pos  # the record's start, wherever the window now is
            try:
                c = ramcodec.RamRecordStruct.parse(b.mv[pos : min(b.end, pos + want)], **self.ram_params)
            except ConstructError as e:
                if kind == F.RAM_SAVE_FLAG_MEM_SIZE and not self.configured and have and not self._ignore_shared_tried:
                    # Without a configuration record (machine types <= 2.3) nothing says
                    # whether x-ignore-shared added block addresses: try the other reading.
                    self._ignore_shared_tried = True
                    self.ram_params["ignore_shared"] = not self.ram_params["ignore_shared"]
                    continue
                if not have and b.eof:
                    raise Truncated() from None
                if want >= b.size or (have and want > 1 << 20):
                    raise self._err(f"RAM record does not decode: {str(e).splitlines()[-1]}", offset=off) from None
                want = min(b.size, want * 4)
                continue
            rec = ramcodec.record_from_container(c, offset=off, channel=self.channel, depth=depth)
            b.pos = pos + len(ramcodec.build_record(rec, **self.ram_params))
            if rec.data is not None and not isinstance(rec.data, bytes):
                rec.data = bytes(rec.data)
            return rec

    def _mem_size_mapped_ram(self, pos: int, depth: int) -> RamRecord:
        """MEM_SIZE of a mapped-ram file: after each block's header the file jumps to where
        the next block is written (pages_offset + used_length); the bitmap and the page
        region in between are read through (a hole for zero pages), not kept."""
        b = self.b
        off = b.base + pos
        (word,) = _U64.unpack_from(b.buf, pos)
        fmask = self.ram_params["page_size"] - 1
        total, b.pos = word & ~fmask, pos + 8
        blocks, seen = [], 0
        while seen < total:
            b.need(1)
            n = b.buf[b.pos]
            b.need(1 + n + 8)
            name = bytes(b.mv[b.pos + 1 : b.pos + 1 + n]).decode("latin-1")
            (used,) = _U64.unpack_from(b.buf, b.pos + 1 + n)
            b.pos += 9 + n
            if used == 0 or seen + used > total:
                raise self._err(f"MEM_SIZE block {name!r} length {used:#x} overruns total {total:#x}", offset=off)
            info = ramcodec.RamBlockInfo(name=name, used_length=used)
            if self.ram_params["ignore_shared"]:
                b.need(8)
                (info.mr_addr,) = _U64.unpack_from(b.buf, b.pos)
                b.pos += 8
            b.need(ramcodec.MAPPED_RAM_HEADER_SIZE)
            hdr = ramcodec.MappedRamHeader.parse(b.mv[b.pos : b.pos + ramcodec.MAPPED_RAM_HEADER_SIZE])
            b.pos += ramcodec.MAPPED_RAM_HEADER_SIZE
            info.mapped_ram = {k: hdr[k] for k in ("version", "page_size", "bitmap_offset", "pages_offset")}
            here = b.offset()
            psize = hdr.page_size or self.ram_params["page_size"]
            bitmap_len = ((used // psize) + 63) // 64 * 8
            if hdr.version != 1 or not here <= hdr.bitmap_offset <= hdr.pages_offset or hdr.bitmap_offset + bitmap_len > hdr.pages_offset:
                raise self._err(f"mapped-ram header of block {name} (version {hdr.version}, bitmap at {hdr.bitmap_offset:#x}, "
                                f"pages at {hdr.pages_offset:#x}) does not fit the file at {here:#x}", offset=off)
            b.skip(hdr.bitmap_offset - here)
            present = 0
            left = bitmap_len
            while left:
                if not b.fill(1):
                    raise Truncated()
                k = min(left, b.avail())
                present += int.from_bytes(b.mv[b.pos : b.pos + k], "little").bit_count()
                b.pos += k
                left -= k
            info.mapped_ram["pages_present"] = present
            b.skip(hdr.pages_offset + used - b.offset())
            blocks.append(info)
            seen += used
        return RamRecord(offset=off, channel=self.channel, depth=depth, addr=total, flags=word & fmask, blocks=blocks)


def iter_records(src: BinaryIO, channel: str = MAIN, **kw) -> Iterator[Record]:
    return iter(StreamReader(src, channel, **kw))


def vmdescription_body_sizer(devices: list, framed: dict | None = None) -> BodySizer:
    """A BodySizer from the stream's own VMDESCRIPTION devices (in FULL-section order):
    each FULL body is as long as its description decodes. Streams of machine types
    without footers can only be framed this way; with footers it is exact where footer
    scanning has to guess. A body the description does not fit falls back to scanning.
    `framed`, given, collects (name, instance_id) -> [(description, BLAKE2b of the body)]
    for every body a description decoded, so a later check of the same body against the
    same description need not decode it again."""
    import hashlib

    from . import vmstate
    from .budgets import DecodeBudget

    budget = DecodeBudget()  # one for the whole stream: then bodies are framed by footer scanning
    queues: dict[tuple, list] = {}
    for dev in devices:
        if isinstance(dev, dict):
            queues.setdefault((dev.get("name"), dev.get("instance_id", 0)), []).append(dev)

    def size(info: SectionInfo, window: memoryview) -> int | None:
        queue = queues.get((info.idstr, info.instance_id))
        if not queue:
            return None
        dev = queue.pop(0)
        try:
            n = vmstate.decode_body(dev, window, budget=budget).consumed
        except (vmstate.VmstateDecodeError, KeyError, TypeError, ValueError):
            return None
        if framed is not None:
            framed.setdefault((info.idstr, info.instance_id), []).append(
                (dev, hashlib.blake2b(window[:n], digest_size=16).digest()))
        return n

    return size
