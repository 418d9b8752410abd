"""Wire constants of the QEMU migration stream, under QEMU's own names.

Values are facts of the format (QEMU migration/savevm.c, ram.c, migration.c); nothing here says what a
destination accepts — that is conformance's job.
"""

from enum import IntEnum, IntFlag

QEMU_VM_FILE_MAGIC = 0x5145564D  # "QEVM"
QEMU_VM_FILE_VERSION_COMPAT = 2  # obsolete v2 format
QEMU_VM_FILE_VERSION = 3

TARGET_PAGE_SIZE = 4096  # x86
# A RAM record word is page-aligned address | flags: the destination takes every bit below
# the target page size as flags (0xfff on x86); the defined flags all fit below 0x400.


class SectionType(IntEnum):
    """First byte of every top-level record (savevm.c QEMU_VM_*)."""

    QEMU_VM_EOF = 0x00
    QEMU_VM_SECTION_START = 0x01
    QEMU_VM_SECTION_PART = 0x02
    QEMU_VM_SECTION_END = 0x03
    QEMU_VM_SECTION_FULL = 0x04
    QEMU_VM_SUBSECTION = 0x05
    QEMU_VM_VMDESCRIPTION = 0x06
    QEMU_VM_CONFIGURATION = 0x07
    QEMU_VM_COMMAND = 0x08
    QEMU_VM_SECTION_FOOTER = 0x7E


FULL_HEADER_TYPES = (SectionType.QEMU_VM_SECTION_START, SectionType.QEMU_VM_SECTION_FULL)
SHORT_HEADER_TYPES = (SectionType.QEMU_VM_SECTION_PART, SectionType.QEMU_VM_SECTION_END)


class MigCmd(IntEnum):
    """QEMU_VM_COMMAND ids (MIG_CMD_*)."""

    MIG_CMD_INVALID = 0
    MIG_CMD_OPEN_RETURN_PATH = 1
    MIG_CMD_PING = 2
    MIG_CMD_POSTCOPY_ADVISE = 3
    MIG_CMD_POSTCOPY_LISTEN = 4
    MIG_CMD_POSTCOPY_RUN = 5
    MIG_CMD_POSTCOPY_RAM_DISCARD = 6
    MIG_CMD_PACKAGED = 7
    MIG_CMD_ENABLE_COLO = 8
    MIG_CMD_POSTCOPY_RESUME = 9
    MIG_CMD_RECV_BITMAP = 10
    MIG_CMD_SWITCHOVER_START = 11  # 10.0+


# The strict-SLA series (qemu-devel, June 2024, never merged) proposed SEND_SRC_DOWNTIME
# as id 11, which SWITCHOVER_START took in 10.0. It is only decoded when a caller opts in
# with the id it wants it to have.
MIG_CMD_SEND_SRC_DOWNTIME_PROPOSED_ID = 11

# Commands whose payload has a fixed length (savevm.c mig_cmd_args); -1 there = variable.
MIG_CMD_FIXED_LEN = {
    MigCmd.MIG_CMD_OPEN_RETURN_PATH: 0,
    MigCmd.MIG_CMD_PING: 4,
    MigCmd.MIG_CMD_POSTCOPY_LISTEN: 0,
    MigCmd.MIG_CMD_POSTCOPY_RUN: 0,
    MigCmd.MIG_CMD_PACKAGED: 4,
    MigCmd.MIG_CMD_ENABLE_COLO: 0,
    MigCmd.MIG_CMD_POSTCOPY_RESUME: 0,
    MigCmd.MIG_CMD_SWITCHOVER_START: 0,
}


class MigRpMsg(IntEnum):
    """Return-path message types (MIG_RP_MSG_*), destination to source."""

    MIG_RP_MSG_INVALID = 0
    MIG_RP_MSG_SHUT = 1
    MIG_RP_MSG_PONG = 2
    MIG_RP_MSG_REQ_PAGES_ID = 3
    MIG_RP_MSG_REQ_PAGES = 4
    MIG_RP_MSG_RECV_BITMAP = 5
    MIG_RP_MSG_RESUME_ACK = 6
    MIG_RP_MSG_SWITCHOVER_ACK = 7  # 8.1+


MIG_RP_FIXED_LEN = {
    MigRpMsg.MIG_RP_MSG_SHUT: 4,
    MigRpMsg.MIG_RP_MSG_PONG: 4,
    MigRpMsg.MIG_RP_MSG_REQ_PAGES: 12,
    MigRpMsg.MIG_RP_MSG_RESUME_ACK: 4,
    MigRpMsg.MIG_RP_MSG_SWITCHOVER_ACK: 0,
}
MIG_RP_MAX_LEN = 512
RAMBLOCK_RECV_BITMAP_ENDING = 0x0123456789ABCDEF


class RamSaveFlag(IntFlag):
    """Low bits of every RAM record word (ram.c RAM_SAVE_FLAG_*)."""

    RAM_SAVE_FLAG_FULL = 0x001  # obsolete
    RAM_SAVE_FLAG_ZERO = 0x002
    RAM_SAVE_FLAG_MEM_SIZE = 0x004
    RAM_SAVE_FLAG_PAGE = 0x008
    RAM_SAVE_FLAG_EOS = 0x010
    RAM_SAVE_FLAG_CONTINUE = 0x020
    RAM_SAVE_FLAG_XBZRLE = 0x040
    RAM_SAVE_FLAG_HOOK = 0x080
    RAM_SAVE_FLAG_COMPRESS_PAGE = 0x100  # removed in 9.1
    RAM_SAVE_FLAG_MULTIFD_FLUSH = 0x200  # 8.0+


ENCODING_FLAG_XBZRLE = 0x01
RAM_SECTION_IDSTR = "ram"
RAM_SECTION_VERSION = 4

# Configuration subsections (savevm.c vmstate_configuration)
SUBSECTION_TARGET_PAGE_BITS = "configuration/target-page-bits"
SUBSECTION_CAPABILITIES = "configuration/capabilities"
SUBSECTION_UUID = "configuration/uuid"

MAPPED_RAM_HEADER_SIZE = 28

# Multifd
MULTIFD_MAGIC = 0x11223344
MULTIFD_VERSION = 1


# VFIO main-stream markers (hw/vfio/migration.c)
class VfioMigFlag(IntEnum):
    VFIO_MIG_FLAG_END_OF_STATE = 0xFFFFFFFFEF100001
    VFIO_MIG_FLAG_DEV_CONFIG_STATE = 0xFFFFFFFFEF100002
    VFIO_MIG_FLAG_DEV_SETUP_STATE = 0xFFFFFFFFEF100003
    VFIO_MIG_FLAG_DEV_DATA_STATE = 0xFFFFFFFFEF100004
    VFIO_MIG_FLAG_DEV_INIT_DATA_SENT = 0xFFFFFFFFEF100005
    VFIO_MIG_FLAG_DEV_CONFIG_LOAD_READY = 0xFFFFFFFFEF100006
