"""The violation catalogue: every code the rules can report, what it means, the QEMU
behaviour it mirrors and its severity on each destination version — data, in one table.

Severity says what a destination of the target version does with the stream:
  reject       it fails the load (or hangs)
  silent-loss  it accepts, but guest state is lost or wrong
  deviation    it accepts harmlessly, yet no conforming source writes it

A severity depends on the code and the destination version only: an entry has a default
and overrides for the versions that differ. Nothing else picks a severity; the models
emit a `Code` through a `conformance.rules.sink.ViolationSink`, which looks it up here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum, StrEnum
from types import MappingProxyType
from typing import Iterable, Mapping


class Severity(str, Enum):
    REJECT = "reject"
    SILENT_LOSS = "silent-loss"
    DEVIATION = "deviation"


class Code(StrEnum):
    """A violation code; its value is the code as reports and docs spell it."""

    BAD_MAGIC = "bad-magic"
    OBSOLETE_VERSION = "obsolete-version"
    UNSUPPORTED_VERSION = "unsupported-version"
    CONFIGURATION_MISSING = "configuration-missing"
    CONFIGURATION_MALFORMED = "configuration-malformed"
    MACHINE_TYPE_UNSUPPORTED = "machine-type-unsupported"
    MULTIFD_INIT = "multifd-init"
    MULTIFD_PACKET = "multifd-packet"
    MULTIFD_PACKET_SIZE = "multifd-packet-size"
    MULTIFD_PACKET_ORDER = "multifd-packet-order"
    MULTIFD_PACKET_MISSING = "multifd-packet-missing"
    MULTIFD_SYNC_COUNT = "multifd-sync-count"
    MULTIFD_SYNC_EXTRA = "multifd-sync-extra"
    COLO_WITHOUT_CAPABILITY = "colo-without-capability"
    MULTIFD_CHANNELS = "multifd-channels"
    MULTIFD_CHANNELS_MISSING = "multifd-channels-missing"
    MULTIFD_ZERO_PAGES_IGNORED = "multifd-zero-pages-ignored"
    ONE_SIDED_SETTING = "one-sided-setting"
    MULTIFD_PAGE_IN_POSTCOPY = "multifd-page-in-postcopy"
    POSTCOPY_LISTEN_BEFORE_FLUSH = "postcopy-listen-before-flush"
    CAPABILITY_PAIR_REFUSED = "capability-pair-refused"
    UNKNOWN_CAPABILITY = "unknown-capability"
    RAM_MAPPED_RAM_FLAGS = "ram-mapped-ram-flags"
    MACHINE_TYPE_MISMATCH = "machine-type-mismatch"
    UNKNOWN_SECTION_TYPE = "unknown-section-type"
    UNKNOWN_SECTION_ID = "unknown-section-id"
    REUSED_SECTION_ID = "reused-section-id"
    DUPLICATE_DEVICE_SECTION = "duplicate-device-section"
    UNKNOWN_SECTION = "unknown-section"
    SECTION_VERSION_TOO_NEW = "section-version-too-new"
    SECTION_VERSION_TOO_OLD = "section-version-too-old"
    SECTION_NOT_OPEN = "section-not-open"
    MISSING_FOOTER = "missing-footer"
    FOOTER_MISMATCH = "footer-mismatch"
    DEVICE_BODY_MISMATCH = "device-body-mismatch"
    DEVICE_LOAD_FAILED = "device-load-failed"
    DEVICE_SUBSECTION_UNKNOWN = "device-subsection-unknown"
    DEVICE_FIELD_EQUAL_MISMATCH = "device-field-equal-mismatch"
    DEVICE_VALUE_CHECK = "device-value-check"
    PCI_CONFIG_READ_ONLY = "pci-config-read-only"
    DEVICE_STATE_NOT_JUDGED = "device-state-not-judged"
    UNKNOWN_COMMAND = "unknown-command"
    COMMAND_BAD_LENGTH = "command-bad-length"
    COMMAND_MALFORMED = "command-malformed"
    PING_WITHOUT_RETURN_PATH = "ping-without-return-path"
    POSTCOPY_WRONG_STATE = "postcopy-wrong-state"
    POSTCOPY_ADVISE_LENGTH = "postcopy-advise-length"
    PACKAGED_TOO_LARGE = "packaged-too-large"
    PACKAGE_INCOMPLETE = "package-incomplete"
    PACKAGE_TRAILING_DATA = "package-trailing-data"
    RETURN_PATH_REOPENED = "return-path-reopened"
    POSTCOPY_WITHOUT_RETURN_PATH = "postcopy-without-return-path"
    RP_MALFORMED = "rp-malformed"
    RP_SHUT_ERROR = "rp-shut-error"
    RP_AFTER_SHUT = "rp-after-shut"
    RP_PONG_UNEXPECTED = "rp-pong-unexpected"
    RP_PING_UNANSWERED = "rp-ping-unanswered"
    RP_BAD_PAGE_REQUEST = "rp-bad-page-request"
    RP_RECV_BITMAP = "rp-recv-bitmap"
    RP_RESUME_ACK = "rp-resume-ack"
    RECOVERY_COMMAND_OUTSIDE_RECOVERY = "recovery-command-outside-recovery"
    RAM_VERSION = "ram-version"
    RAM_UNKNOWN_FLAGS = "ram-unknown-flags"
    RAM_MULTIFD_FLUSH_UNSUPPORTED = "ram-multifd-flush-unsupported"
    RAM_HOOK_WITHOUT_RDMA = "ram-hook-without-rdma"
    RAM_COMPRESSED_PAGE = "ram-compressed-page"
    RAM_ZERO_FILL = "ram-zero-fill"
    RAM_CONTINUE_WITHOUT_BLOCK = "ram-continue-without-block"
    RAM_UNKNOWN_BLOCK = "ram-unknown-block"
    RAM_OFFSET_OUT_OF_RANGE = "ram-offset-out-of-range"
    RAM_BLOCK_UNKNOWN = "ram-block-unknown"
    RAM_BLOCK_SIZE_MISMATCH = "ram-block-size-mismatch"
    RAM_MEM_SIZE_DUPLICATE = "ram-mem-size-duplicate"
    RAM_XBZRLE = "ram-xbzrle"
    RAM_PAGE_BEFORE_MEM_SIZE = "ram-page-before-mem-size"
    TRUNCATED = "truncated"
    MALFORMED = "malformed"
    HOSTILE_LENGTH = "hostile-length"
    MISSING_EOF = "missing-eof"
    MISSING_VMDESCRIPTION = "missing-vmdescription"
    VMDESCRIPTION_TRUNCATED = "vmdescription-truncated"
    VMDESCRIPTION_MALFORMED = "vmdescription-malformed"
    TRAILING_DATA = "trailing-data"
    SWITCHOVER_BEFORE_ACK = "switchover-before-ack"
    SWITCHOVER_ACK_UNREACHABLE = "switchover-ack-unreachable"
    INIT_DATA_SENT_UNEXPECTED = "init-data-sent-unexpected"
    DOWNTIME_LIMIT_EXCEEDED = "downtime-limit-exceeded"
    STALE_PAGE = "stale-page"
    PAGE_RACE = "page-race"
    SYNC_DEADLOCK = "sync-deadlock"
    SYNC_UNRELEASED = "sync-unreleased"
    QUEUE_CAP_EXCEEDED = "queue-cap-exceeded"
    STATE_BUFFER_MISSING = "state-buffer-missing"
    STATE_BUFFER_DUPLICATE = "state-buffer-duplicate"
    STATE_BUFFER_AFTER_CONFIG = "state-buffer-after-config"
    VFIO_UNKNOWN_MARKER = "vfio-unknown-marker"
    STATE_BUFFER_UNKNOWN_DEVICE = "state-buffer-unknown-device"
    STATE_BUFFER_NOT_MULTIFD = "state-buffer-not-multifd"
    STATE_BUFFER_TOO_SHORT = "state-buffer-too-short"
    STATE_BUFFER_VERSION = "state-buffer-version"
    STATE_BUFFER_INVALID_IDX = "state-buffer-invalid-idx"
    SWITCHOVER_START_MISSING = "switchover-start-missing"


@dataclass(frozen=True, slots=True)
class Violation:
    code: Code
    severity: Severity
    channel: str
    offset: int
    message: str
    section: str | None = None

    def as_json(self) -> dict:
        d = asdict(self)
        d["code"] = str(self.code)
        d["severity"] = self.severity.value
        return d

    def one_line(self) -> str:
        where = f"{self.channel} @ {self.offset}" + (f" [{self.section}]" if self.section else "")
        return f"{self.severity.value:<11} {self.code:<28} {where}: {self.message}"


@dataclass(frozen=True, slots=True)
class CatalogueEntry:
    code: Code
    severity: Severity  # on every version no `where` row matches
    meaning: str
    qemu: str  # the QEMU behaviour or text it mirrors
    # (fact, value, severity): on a version whose registry row (conformance/versions.py) has
    # that value for that fact, the severity is this one. Facts, not version numbers: a new
    # modelled version gets its severities from its row alone.
    where: tuple[tuple[str, object, Severity], ...] = ()

    def severity_on(self, version: str | None) -> Severity:
        """The severity on a destination of `version` (None: a model that knows no version)."""
        from conformance.versions import FACTS

        facts = FACTS.get(version) if version is not None else None
        if facts is not None:
            for fact, value, severity in self.where:
                if getattr(facts, fact) == value:
                    return severity
        return self.severity


_C = CatalogueEntry
CATALOGUE: Mapping[Code, CatalogueEntry] = MappingProxyType({
    e.code: e
    for e in [
        _C(Code.BAD_MAGIC, Severity.REJECT, "the file does not start with QEVM", "Not a migration stream"),
        _C(Code.OBSOLETE_VERSION, Severity.REJECT, "stream version 2",
           "SaveVM v2 format is obsolete and don't work anymore"),
        _C(Code.UNSUPPORTED_VERSION, Severity.REJECT, "stream version other than 2 or 3",
           "Unsupported migration stream version"),
        _C(Code.CONFIGURATION_MISSING, Severity.REJECT, "no CONFIGURATION record after the header",
           "Configuration section missing"),
        _C(Code.CONFIGURATION_MALFORMED, Severity.REJECT, "the CONFIGURATION record does not decode (e.g. a subsection it does not have)",
           "VM subsection '%s' in 'configuration' does not exist (the configuration load fails)"),
        _C(Code.MACHINE_TYPE_UNSUPPORTED, Severity.REJECT,
           "the stream's machine type does not exist in the destination version",
           "qemu-system-x86_64: unsupported machine type (the destination does not start)"),
        _C(Code.MULTIFD_INIT, Severity.REJECT,
           "a multifd channel's initial packet: magic, version, id out of range or twice, uuids differ",
           "failed to receive packet via multifd channel N: multifd: received … (the load fails)"),
        _C(Code.MULTIFD_PACKET, Severity.REJECT,
           "a multifd packet the destination refuses: magic, version, flags, sizes, block, offset",
           "multifd: received packet … / unknown ram block / offset too long — the destination hangs (VERIFIED)"),
        _C(Code.MULTIFD_PACKET_SIZE, Severity.DEVIATION,
           "next_packet_size differs from the page data of an uncompressed packet",
           "ignored: the destination reads normal_pages pages"),
        _C(Code.MULTIFD_PACKET_ORDER, Severity.DEVIATION, "packet_num goes backwards on one channel",
           "not checked by QEMU; no source does it"),
        _C(Code.MULTIFD_PACKET_MISSING, Severity.SILENT_LOSS, "a packet number (shared counter, 9.0+) is on no channel",
           "not checked by QEMU: the load completes without the lost packet's pages (VERIFIED on 10.0 by a "
           "fuzzing finding); a lost SYNC is multifd-sync-count"),
        _C(Code.MULTIFD_SYNC_COUNT, Severity.REJECT,
           "a channel has fewer SYNC packets than the main stream's sync points",
           "the destination main thread waits for a SYNC that never comes: it hangs (VERIFIED on 10.0)"),
        _C(Code.COLO_WITHOUT_CAPABILITY, Severity.REJECT,
           "MIG_CMD_ENABLE_COLO into a destination without the x-colo capability",
           "ENABLE_COLO command come in migration stream, but x-colo capability is not set (10.0; VERIFIED); "
           "7.2 checks nothing, turns COLO on and after the load waits for a checkpoint: it hangs (VERIFIED)"),
        _C(Code.MULTIFD_SYNC_EXTRA, Severity.DEVIATION,
           "a channel has more SYNC packets than the main stream's sync points",
           "the channel thread waits for a release that never comes until the load ends: it completes "
           "(VERIFIED on 7.2 and 10.0 by fuzzing findings); no source writes it"),
        _C(Code.MULTIFD_CHANNELS, Severity.SILENT_LOSS, "more channels than the destination's multifd-channels",
           "the extra channels are never read: the load completes with their pages missing"),
        _C(Code.MULTIFD_CHANNELS_MISSING, Severity.REJECT,
           "fewer multifd channels than the destination's multifd-channels (or channels for a destination "
           "without multifd)",
           "the destination starts loading only once every channel it expects is connected: it hangs in "
           "'setup' (VERIFIED 7.2 and 10.0)"),
        _C(Code.MULTIFD_ZERO_PAGES_IGNORED, Severity.SILENT_LOSS,
           "multifd packets list zero pages (zero-page-detection=multifd) for a destination that ignores that list",
           "7.2 reads no zero-page list (its packet has none): those pages keep what the destination had "
           "(read from the sources; a real run cannot show it apart from 10.0, which also skips a zero page it "
           "never received before)"),
        _C(Code.ONE_SIDED_SETTING, Severity.REJECT,
           "the stream was written with a setting the destination does not share (a -global, capability or "
           "parameter set on one side only; conformance/rules/settings.py); said once, with the setting that "
           "would make the destination load it",
           "Missing section footer for %s / Unknown savevm section type 126 / Configuration section missing / "
           "Unknown savevm section type 7 / a hang (VERIFIED 7.2 and 10.0)"),
        _C(Code.MULTIFD_PAGE_IN_POSTCOPY, Severity.REJECT, "a multifd channel delivers a page after POSTCOPY_LISTEN",
           "10.1+: channels carry no data in postcopy (the source flushes them before); "
           "a late page can overwrite a placed one"),
        _C(Code.POSTCOPY_LISTEN_BEFORE_FLUSH, Severity.SILENT_LOSS,
           "POSTCOPY_LISTEN while a multifd channel has pages not yet synced",
           "10.1+ syncs every channel in the PART section just before postcopy starts"),
        _C(Code.CAPABILITY_PAIR_REFUSED, Severity.REJECT,
           "postcopy-ram together with multifd on a version that refuses the pair",
           "migrate-set-capabilities refuses it on 8.1 .. 10.0 (allowed in 7.2 and from 10.1)"),
        _C(Code.UNKNOWN_CAPABILITY, Severity.REJECT,
           "configuration names a capability the destination does not validate",
           "Received unknown capability %s"),
        _C(Code.RAM_MAPPED_RAM_FLAGS, Severity.REJECT,
           "a page, zero, XBZRLE, HOOK or FLUSH record in a mapped-ram stream",
           "Unexpected RAM flags: %d"),
        _C(Code.MACHINE_TYPE_MISMATCH, Severity.REJECT,
           "machine type differs from the destination's (compared over the received length)",
           "Machine type received is '%s' and local is '%s'"),
        _C(Code.UNKNOWN_SECTION_TYPE, Severity.REJECT, "a top-level record type byte QEMU does not know",
           "Unknown savevm section type N"),
        _C(Code.UNKNOWN_SECTION_ID, Severity.REJECT, "PART/END for a section id no START/FULL introduced",
           "Unknown savevm section N"),
        _C(Code.REUSED_SECTION_ID, Severity.DEVIATION, "a START reuses the id of an earlier START",
           "accepted: the newer entry shadows the older"),
        _C(Code.DUPLICATE_DEVICE_SECTION, Severity.DEVIATION, "a FULL section for an idstr/instance already loaded",
           "accepted: the state is loaded twice"),
        _C(Code.UNKNOWN_SECTION, Severity.REJECT, "idstr/instance the destination does not have",
           "Unknown savevm section or instance '%s' %u"),
        _C(Code.SECTION_VERSION_TOO_NEW, Severity.REJECT, "section version above the destination's",
           "savevm: unsupported version %d for '%s' v%d"),
        _C(Code.SECTION_VERSION_TOO_OLD, Severity.REJECT, "section version below the VMSD's minimum_version_id",
           "%s: incoming version_id %d is too old for local minimum version_id %d"),
        _C(Code.SECTION_NOT_OPEN, Severity.DEVIATION,
           "PART/END for an iterable section that already ended or was never started",
           "accepted by QEMU; no source writes it"),
        _C(Code.MISSING_FOOTER, Severity.REJECT, "no 0x7e footer after a section body",
           "Missing section footer for %s"),
        _C(Code.FOOTER_MISMATCH, Severity.REJECT, "footer carries another section id",
           "Mismatched section id in footer for %s - read 0x%x expected 0x%x"),
        _C(Code.DEVICE_LOAD_FAILED, Severity.REJECT,
           "the destination's own VMSD reads a device body to another length than the source "
           "wrote (a field it sizes, counts or gates differently), or refuses a subsection's version",
           "Missing section footer for %s / %s: incoming version_id %d is too new for local version_id %d / "
           "error while loading state for instance 0x%x of device '%s'"),
        _C(Code.DEVICE_SUBSECTION_UNKNOWN, Severity.REJECT,
           "a subsection the destination's VMSD of that device does not have",
           "error while loading state for instance 0x%x of device '%s' (vmstate_subsection_load: -ENOENT); "
           "load of migration failed: No such file or directory"),
        _C(Code.DEVICE_FIELD_EQUAL_MISMATCH, Severity.REJECT,
           "a `... equal` field differs from the destination's own value, or an `int32 le` field exceeds it",
           "%x != %x / Invalid value %d expecting positive value <= %d; Failed to load %s:%s"),
        _C(Code.DEVICE_VALUE_CHECK, Severity.REJECT,
           "a device value the destination validates while or after loading (VMSTATE_VALIDATE, post_load) "
           "fails its check: a count that must match the destination's configuration or lie in range, a vapic "
           "state whose option ROM is not in guest RAM (rules/data/value-rules.json)",
           "Input validation failed: %s/%s / error while loading state for instance 0x%x of device '%s'; "
           "load of migration failed: Operation not permitted"),
        _C(Code.PCI_CONFIG_READ_ONLY, Severity.REJECT,
           "a PCI device's config space differs from the destination's device in a bit the destination keeps "
           "read-only (cmask and not wmask/w1cmask: IDs, revision, class, header type, capability pointer)",
           "get_pci_config_device: Bad config data: i=0x%x read: %x device: %x cmask: %x wmask: %x w1cmask:%x"),
        _C(Code.DEVICE_STATE_NOT_JUDGED, Severity.DEVIATION,
           "never a violation: a section the destination's layout cannot follow to its end "
           "(a custom-coded field, a count from a device property, an unresolved field_exists test), counted in "
           "stats.device_state", "(none: QEMU loads it with code the layout data does not describe)"),
        _C(Code.DEVICE_BODY_MISMATCH, Severity.REJECT, "a device body does not match its VMSD description",
           "the destination reads another length and fails at the footer"),
        _C(Code.UNKNOWN_COMMAND, Severity.REJECT, "MIG_CMD id 0 or beyond the destination's table",
           "MIG_CMD 0x%x unknown (len 0x%x)"),
        _C(Code.COMMAND_BAD_LENGTH, Severity.REJECT, "a fixed-length command with another length",
           "%s received with bad length - expecting %zu, got %d"),
        _C(Code.COMMAND_MALFORMED, Severity.REJECT, "a variable-length command whose payload does not decode",
           "CMD_* invalid length / missing nil / invalid version"),
        _C(Code.PING_WITHOUT_RETURN_PATH, Severity.REJECT, "PING before OPEN_RETURN_PATH",
           "CMD_PING (0x%x) received with no return path"),
        _C(Code.POSTCOPY_WRONG_STATE, Severity.REJECT,
           "a postcopy command out of ADVISE -> DISCARD -> LISTEN -> RUN order",
           "CMD_POSTCOPY_* in wrong postcopy state (%d)"),
        _C(Code.POSTCOPY_ADVISE_LENGTH, Severity.REJECT, "ADVISE payload neither 0 nor 16 bytes",
           "CMD_POSTCOPY_ADVISE invalid length (%d)"),
        _C(Code.PACKAGED_TOO_LARGE, Severity.REJECT, "a nested PACKAGED length reaching past the package that holds it",
           "CMD_PACKAGED: Buffer receive fail ret=%d length=%zu (the nested loader reads a short buffer)"),
        _C(Code.PACKAGE_INCOMPLETE, Severity.REJECT, "the PACKAGED data ends without POSTCOPY_RUN or EOF",
           "the nested loader reads past the package buffer and the load fails"),
        _C(Code.PACKAGE_TRAILING_DATA, Severity.DEVIATION, "records in the PACKAGED data after POSTCOPY_RUN or EOF",
           "never read: the nested loader has quit"),
        _C(Code.RETURN_PATH_REOPENED, Severity.DEVIATION, "a second OPEN_RETURN_PATH",
           "CMD_OPEN_RETURN_PATH called when RP already open (not fatal)"),
        _C(Code.POSTCOPY_WITHOUT_RETURN_PATH, Severity.DEVIATION, "POSTCOPY_LISTEN without OPEN_RETURN_PATH",
           "accepted, but the destination cannot request the pages it faults on; no source does this"),
        _C(Code.RP_MALFORMED, Severity.REJECT, "a return-path message of unknown type or wrong length",
           "Received invalid message 0x%04x length 0x%04x (the source fails)"),
        _C(Code.RP_SHUT_ERROR, Severity.REJECT, "SHUT with a non-zero value",
           "Sibling indicated error %d (the source fails)"),
        _C(Code.RP_AFTER_SHUT, Severity.DEVIATION, "a return-path message after SHUT",
           "not read: the source stops at SHUT"),
        _C(Code.RP_PONG_UNEXPECTED, Severity.DEVIATION, "a PONG that answers no PING", "traced only"),
        _C(Code.RP_PING_UNANSWERED, Severity.DEVIATION, "a PING with no PONG on the captured return path",
           "traced only; the capture may have ended early"),
        _C(Code.RP_BAD_PAGE_REQUEST, Severity.REJECT, "REQ_PAGES(_ID) for an unknown block or beyond it",
           "the source fails the page request and the migration"),
        _C(Code.RP_RECV_BITMAP, Severity.REJECT, "RECV_BITMAP blob with a wrong size or end mark",
           "ramblock '%s' bitmap size mismatch / end mark incorrect"),
        _C(Code.RP_RESUME_ACK, Severity.REJECT, "RESUME_ACK with a value other than 1",
           "the source refuses the resume"),
        _C(Code.RECOVERY_COMMAND_OUTSIDE_RECOVERY, Severity.DEVIATION, "POSTCOPY_RESUME outside postcopy recovery",
           "illegal resume received (not fatal)"),
        _C(Code.RAM_VERSION, Severity.REJECT, "ram section version is not 4",
           "error while loading state for instance 0x0 of device 'ram'"),
        _C(Code.RAM_UNKNOWN_FLAGS, Severity.REJECT, "RAM record flags are no known combination",
           "Unknown combination of migration flags: 0x%x"),
        _C(Code.RAM_MULTIFD_FLUSH_UNSUPPORTED, Severity.REJECT, "MULTIFD_FLUSH sent to a destination older than 8.0",
           "Unknown combination of migration flags: 0x200"),
        _C(Code.RAM_HOOK_WITHOUT_RDMA, Severity.DEVIATION, "RAM_SAVE_FLAG_HOOK on a non-RDMA stream",
           "7.2 fails the section; 10.0 ignores it", where=(("hook_fails", True, Severity.REJECT),)),
        _C(Code.RAM_COMPRESSED_PAGE, Severity.REJECT, "COMPRESS_PAGE record",
           "7.2: Received an unexpected compressed page unless compress is on; 10.0: unknown flags 0x100"),
        _C(Code.RAM_ZERO_FILL, Severity.REJECT, "ZERO record with a non-zero fill byte",
           "7.2 fills the page with it; 8.2+: Found a zero page with value %d",
           where=(("zero_fill_must_be_zero", False, Severity.SILENT_LOSS),)),
        _C(Code.RAM_CONTINUE_WITHOUT_BLOCK, Severity.REJECT,
           "CONTINUE before any page record named a block on this channel",
           "Ack, bad migration stream! / Illegal RAM offset 0"),
        _C(Code.RAM_UNKNOWN_BLOCK, Severity.REJECT, "a page record names a block MEM_SIZE did not announce",
           "Can't find block %s"),
        _C(Code.RAM_OFFSET_OUT_OF_RANGE, Severity.REJECT, "page offset not inside its block", "Illegal RAM offset %lx"),
        _C(Code.RAM_BLOCK_UNKNOWN, Severity.REJECT,
           "MEM_SIZE announces a RAMBlock the destination does not have (needs --reference)",
           "Unknown ramblock \"%s\", cannot accept migration"),
        _C(Code.RAM_BLOCK_SIZE_MISMATCH, Severity.REJECT,
           "MEM_SIZE length (page-aligned) differs from the destination's block, which is not resizable, or "
           "exceeds a resizeable block's max_length",
           "Size mismatch: %s: 0x%x != 0x%x: Invalid argument / Size too large: %s: 0x%x > 0x%x: Invalid argument"),
        _C(Code.RAM_MEM_SIZE_DUPLICATE, Severity.DEVIATION, "a MEM_SIZE list announces a block twice",
           "the second announcement overwrites the first"),
        _C(Code.RAM_XBZRLE, Severity.REJECT, "XBZRLE record that does not decode",
           "Failed to load XBZRLE page - wrong compression! / len overflow! / decode error!"),
        _C(Code.RAM_PAGE_BEFORE_MEM_SIZE, Severity.REJECT, "page records before any MEM_SIZE block list",
           "Can't find block %s"),
        _C(Code.TRUNCATED, Severity.REJECT, "the stream ends inside a record",
           "load of migration failed: Input/output error"),
        _C(Code.MALFORMED, Severity.REJECT, "bytes that cannot be framed any further",
           "the destination fails at the same place"),
        _C(Code.HOSTILE_LENGTH, Severity.REJECT, "a length field beyond any sane bound",
           "the destination fails allocating or reading it"),
        _C(Code.MISSING_EOF, Severity.REJECT, "the stream ends without QEMU_VM_EOF",
           "load of migration failed: Input/output error"),
        _C(Code.MISSING_VMDESCRIPTION, Severity.DEVIATION, "no VMDESCRIPTION trailer after EOF",
           "Expected vmdescription section, but got %d (warning only)"),
        _C(Code.VMDESCRIPTION_TRUNCATED, Severity.DEVIATION, "the stream ends inside the VMDESCRIPTION trailer",
           "accepted: 7.2 and 10.0 complete (checked on both)"),
        _C(Code.VMDESCRIPTION_MALFORMED, Severity.DEVIATION, "the VMDESCRIPTION trailer is not valid JSON",
           "not read by the destination"),
        _C(Code.TRAILING_DATA, Severity.DEVIATION, "bytes after the trailer", "ignored by the destination"),
        # --- switchover-ack and the downtime SLA (switchover.py, downtime.py) ---
        _C(Code.SWITCHOVER_BEFORE_ACK, Severity.DEVIATION,
           "the source switched over before SWITCHOVER_ACK while its guest ran",
           "a QEMU source with switchover-ack waits for the ack unless the VM is stopped "
           "(no conforming source does this)"),
        _C(Code.SWITCHOVER_ACK_UNREACHABLE, Severity.REJECT,
           "the destination waits for a device that never sends DEV_INIT_DATA_SENT "
           "(or does not use switchover-ack at all): no SWITCHOVER_ACK ever comes",
           "the running source stays 'active' for ever (VERIFIED 10.0, destination with switchover-ack off)"),
        _C(Code.INIT_DATA_SENT_UNEXPECTED, Severity.REJECT,
           "DEV_INIT_DATA_SENT from a device the destination does not count, or with nothing pending",
           "Received INIT_DATA_SENT but switchover ack is not used / qemu_loadvm_approve_switchover failed, err=-22"),
        _C(Code.DOWNTIME_LIMIT_EXCEEDED, Severity.REJECT,
           "proposed SEND_SRC_DOWNTIME: source downtime + destination load time reached the abort limit "
           "at a check point",
           "the destination aborts the load (RFC 'abort on destination if switchover limit exceeded', never merged)"),
        # --- reference models: multifd RAM under sync semantics (ram_model.py) and VFIO
        # --- device state (vfio_model.py; the section body markers: wireformat/vfio.py) ---
        _C(Code.STALE_PAGE, Severity.SILENT_LOSS,
           "a page of sync round N is written after the same page of round N+1 (only when the sync barrier is broken)",
           "silent: the guest keeps the older contents (the multifd sync exists to prevent it)"),
        _C(Code.PAGE_RACE, Severity.SILENT_LOSS,
           "two lanes send different contents for the same page between the same two sync points",
           "no order between channels: the page ends with whichever write came last"),
        _C(Code.SYNC_DEADLOCK, Severity.REJECT,
           "the main stream waits at a sync point for a channel's SYNC that never comes",
           "the destination main thread blocks for ever: it hangs, QMP unanswered (VERIFIED on 10.0)"),
        _C(Code.SYNC_UNRELEASED, Severity.SILENT_LOSS,
           "a channel has packets behind a SYNC the main stream never matches",
           "the channel thread blocks until cleanup: the packets after the SYNC are never loaded"),
        _C(Code.QUEUE_CAP_EXCEEDED, Severity.REJECT,
           "a VFIO state buffer would take the device's queued buffers above its cap",
           "%s: queuing state buffer %u would exceed the size max of %lu (10.1 x-migration-max-queued-buffers-size)"),
        _C(Code.STATE_BUFFER_MISSING, Severity.REJECT,
           "a VFIO device's state buffers end with a gap or without the config packet",
           "the load thread waits for the missing buffer for ever: the destination hangs"),
        _C(Code.STATE_BUFFER_DUPLICATE, Severity.REJECT, "a VFIO state buffer idx arrives twice",
           "%s: state buffer %u already filled"),
        _C(Code.STATE_BUFFER_AFTER_CONFIG, Severity.SILENT_LOSS,
           "a VFIO state buffer above the config packet's idx, or a second config packet",
           "accepted; the load thread stops at the config index and never writes what lies above it"),
        _C(Code.VFIO_UNKNOWN_MARKER, Severity.REJECT, "a VFIO section body carries a marker QEMU does not know",
           "%s: Unknown tag 0x%lx (vfio_load_state fails the load)"),
        _C(Code.STATE_BUFFER_UNKNOWN_DEVICE, Severity.REJECT,
           "a device-state packet for an idstr/instance the destination does not have",
           "Unknown idstr %s or instance id %u for load state buffer"),
        _C(Code.STATE_BUFFER_NOT_MULTIFD, Severity.REJECT,
           "a device-state packet for a device not doing multifd transfer",
           "%s: got device state packet but not doing multifd transfer"),
        _C(Code.STATE_BUFFER_TOO_SHORT, Severity.REJECT, "a VFIODeviceStatePacket shorter than its 12-byte header",
           "%s: packet too short at %zu (min is %zu)"),
        _C(Code.STATE_BUFFER_VERSION, Severity.REJECT, "a VFIODeviceStatePacket version other than 0",
           "%s: packet has unknown version %u"),
        _C(Code.STATE_BUFFER_INVALID_IDX, Severity.REJECT, "a VFIODeviceStatePacket idx of UINT32_MAX",
           "%s: packet index is invalid"),
        _C(Code.SWITCHOVER_START_MISSING, Severity.REJECT, "VFIO state buffers queued but no SWITCHOVER_START",
           "the load thread starts on SWITCHOVER_START: without it the buffers are never written (SOURCE reading)"),
    ]
})


def severity(code: Code, version: str | None = None) -> Severity:
    """The severity of `code` on a destination of `version` (KeyError for a code not catalogued)."""
    return CATALOGUE[code].severity_on(version)


def describe(code: str) -> CatalogueEntry | None:
    try:
        return CATALOGUE.get(Code(code))
    except ValueError:
        return None


def modelled_versions() -> list[str]:
    """The destination versions whose behaviour is modelled (conformance.rules.profile)."""
    from conformance.rules.profile import PROFILES

    return list(PROFILES)


def as_json(versions: Iterable[str] | None = None) -> dict:
    """The catalogue for `migconform catalogue --json`: per code its meaning, QEMU text and
    severity on each modelled version."""
    vs = modelled_versions() if versions is None else list(versions)
    return {str(c): {"meaning": e.meaning, "qemu": e.qemu, "severity": {v: e.severity_on(v).value for v in vs}}
            for c, e in CATALOGUE.items()}


def catalogue_markdown(versions: Iterable[str] | None = None) -> str:
    """The catalogue as the table in docs/violations.md."""
    vs = modelled_versions() if versions is None else list(versions)
    rows = ["| code | " + " | ".join(vs) + " | meaning | QEMU behaviour it mirrors |",
            "| --- | " + " | ".join("---" for _ in vs) + " | --- | --- |"]
    for e in CATALOGUE.values():
        sev = " | ".join(e.severity_on(v).value for v in vs)
        rows.append(f"| `{e.code}` | {sev} | {e.meaning} | {e.qemu.replace('|', '/')} |")
    return ("# Violation codes\n\nGenerated from `conformance/rules/catalogue.py` (`migconform catalogue --markdown`).\n"
            "The severity columns say what a destination of that QEMU version does: reject (the load fails or "
            "hangs), silent-loss (accepted, guest state lost or wrong), deviation (accepted harmlessly, yet no "
            "conforming source writes it).\n\n" + "\n".join(rows) + "\n")
