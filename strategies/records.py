"""Hypothesis strategies for single wire records (every generated record builds)."""

from __future__ import annotations

from hypothesis import strategies as st

from wireformat.constants import (
    MigCmd,
    MigRpMsg,
    RamSaveFlag as F,
    SectionType as T,
)
from wireformat.commands import RELEASED, CommandSet
from wireformat.records import (
    Command,
    ConfigSubsection,
    Configuration,
    RamBlockInfo,
    RamRecord,
    SectionFooter,
    SectionHeader,
    VmDescription,
)
from wireformat.returnpath import RpMessage

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 2**64 - 1)
PAGE_SIZE = 4096
CONT = int(F.RAM_SAVE_FLAG_CONTINUE)

# idstr-like names: QEMU's are printable ASCII, up to 255 bytes
names = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40)
machine_types = st.sampled_from(["pc-i440fx-7.2", "pc-q35-7.2", "pc-i440fx-10.0", "pc-q35-10.0", "pc-i440fx-2.12"]) | names
capability_names = st.sampled_from(["x-ignore-shared", "mapped-ram"]) | names


@st.composite
def configurations(draw) -> Configuration:
    subs = []
    if draw(st.booleans()):
        subs.append(ConfigSubsection(name="configuration/target-page-bits", version_id=1, value=draw(st.integers(9, 16))))
    if draw(st.booleans()):
        caps = draw(st.lists(capability_names, min_size=1, max_size=4))
        subs.append(ConfigSubsection(name="configuration/capabilities", version_id=1, value=caps))
    if draw(st.booleans()):
        subs.append(ConfigSubsection(name="configuration/uuid", version_id=1, value=draw(st.binary(min_size=16, max_size=16))))
    return Configuration(machine_type=draw(machine_types), subsections=subs)


def section_headers(section_id=u32, idstr=names) -> st.SearchStrategy[SectionHeader]:
    full = st.builds(
        lambda t, sid, name, inst, ver: SectionHeader(section_type=t, section_id=sid, idstr=name, instance_id=inst, version_id=ver),
        st.sampled_from([T.QEMU_VM_SECTION_START, T.QEMU_VM_SECTION_FULL]), section_id, idstr, u32, u32,
    )
    short = st.builds(
        lambda t, sid: SectionHeader(section_type=t, section_id=sid),
        st.sampled_from([T.QEMU_VM_SECTION_PART, T.QEMU_VM_SECTION_END]), section_id,
    )
    return full | short


section_footers = st.builds(lambda sid: SectionFooter(section_id=sid), u32)
vmdescriptions = st.builds(lambda b: VmDescription(json=b), st.binary(max_size=300))


@st.composite
def command_args(draw, cmd: int, commands: CommandSet = RELEASED) -> dict:
    """Valid decoded arguments for a command id."""
    if cmd == commands.send_src_downtime_id:
        return {"abort_limit_ms": draw(u64), "source_downtime_ms": draw(u64)}
    mc = MigCmd(cmd)
    if mc == MigCmd.MIG_CMD_PING:
        return {"value": draw(u32)}
    if mc == MigCmd.MIG_CMD_PACKAGED:
        return {"length": draw(u32)}
    if mc == MigCmd.MIG_CMD_POSTCOPY_ADVISE:
        return {"page_size_summary": draw(u64), "target_page_size": draw(u64)}
    if mc == MigCmd.MIG_CMD_POSTCOPY_RAM_DISCARD:
        ranges = draw(st.lists(st.tuples(u64, u64), max_size=12))
        return {"version": 0, "block": draw(names), "ranges": ranges}
    if mc == MigCmd.MIG_CMD_RECV_BITMAP:
        return {"block": draw(names)}
    return {}


@st.composite
def commands(draw, command_set: CommandSet = RELEASED, ids=None) -> Command:
    cmd = draw(ids if ids is not None else st.sampled_from([c for c in MigCmd if c != MigCmd.MIG_CMD_INVALID]))
    args = draw(command_args(cmd, command_set))
    return Command(cmd=int(cmd), data=command_set.encode(cmd, args), args=args)


# Any framed command, payload not necessarily of the command's layout (the codec must
# frame it all the same).
raw_commands = st.builds(lambda cmd, data: Command(cmd=cmd, data=data), u16, st.binary(max_size=64))


@st.composite
def ram_block_infos(draw, ignore_shared=False, postcopy=False) -> RamBlockInfo:
    info = RamBlockInfo(name=draw(names), used_length=draw(st.integers(1, 2**40)) * PAGE_SIZE)
    # (with x-ignore-shared a page size and an mr_addr are not told apart by the bytes alone:
    # parsing then needs huge_page_blocks, see wireformat.ram._MemSizeBlocks)
    if postcopy and draw(st.booleans()):
        info.page_size = draw(st.sampled_from([2 << 20, 1 << 30]))
    if ignore_shared:
        info.mr_addr = draw(u64)
    return info


@st.composite
def ram_records(draw, ignore_shared=False, postcopy=False) -> RamRecord:
    kind = draw(st.sampled_from([F.RAM_SAVE_FLAG_ZERO, F.RAM_SAVE_FLAG_PAGE, F.RAM_SAVE_FLAG_XBZRLE,
                                 F.RAM_SAVE_FLAG_COMPRESS_PAGE, F.RAM_SAVE_FLAG_MEM_SIZE, F.RAM_SAVE_FLAG_EOS,
                                 F.RAM_SAVE_FLAG_HOOK, F.RAM_SAVE_FLAG_MULTIFD_FLUSH]))
    kind = int(kind)
    addr = draw(st.integers(0, 2**40)) * PAGE_SIZE
    if kind == F.RAM_SAVE_FLAG_MEM_SIZE:
        blocks = draw(st.lists(ram_block_infos(ignore_shared, postcopy), min_size=1, max_size=4, unique_by=lambda b: b.name))
        return RamRecord(addr=sum(b.used_length for b in blocks), flags=kind, blocks=blocks)
    if kind in (F.RAM_SAVE_FLAG_EOS, F.RAM_SAVE_FLAG_HOOK, F.RAM_SAVE_FLAG_MULTIFD_FLUSH):
        return RamRecord(addr=addr, flags=kind | (CONT if draw(st.booleans()) else 0))
    cont = draw(st.booleans())
    rec = RamRecord(addr=addr, flags=kind | (CONT if cont else 0), block=None if cont else draw(names))
    if kind == F.RAM_SAVE_FLAG_ZERO:
        rec.fill = draw(u8)
    elif kind == F.RAM_SAVE_FLAG_PAGE:
        rec.data = draw(st.binary(min_size=PAGE_SIZE, max_size=PAGE_SIZE) | st.just(bytes(PAGE_SIZE)))
    elif kind == F.RAM_SAVE_FLAG_XBZRLE:
        rec.encoding = draw(u8)
        rec.data = draw(st.binary(max_size=300))
    else:
        rec.data = draw(st.binary(max_size=300))
    return rec


@st.composite
def rp_messages(draw) -> RpMessage:
    from wireformat.returnpath import RP_PAYLOADS

    t = draw(st.sampled_from(list(RP_PAYLOADS)))
    if t in (MigRpMsg.MIG_RP_MSG_SHUT, MigRpMsg.MIG_RP_MSG_PONG, MigRpMsg.MIG_RP_MSG_RESUME_ACK):
        args = {"value": draw(u32)}
    elif t == MigRpMsg.MIG_RP_MSG_REQ_PAGES_ID:
        args = {"start": draw(u64), "length": draw(u32), "block": draw(names)}
    elif t == MigRpMsg.MIG_RP_MSG_REQ_PAGES:
        args = {"start": draw(u64), "length": draw(u32)}
    elif t == MigRpMsg.MIG_RP_MSG_RECV_BITMAP:
        args = {"block": draw(names)}
    else:
        args = {}
    layout = RP_PAYLOADS[t]
    data = b"" if not args else layout.build(args)
    msg = RpMessage(offset=0, type=int(t), data=data, args=args)
    if t == MigRpMsg.MIG_RP_MSG_RECV_BITMAP:
        msg.bitmap = draw(st.binary(max_size=64).map(lambda b: b + bytes(-len(b) % 8)))
        msg.end_mark = 0x0123456789ABCDEF
    return msg
