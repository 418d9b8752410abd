"""Typed violations and their catalogue.

Severity says what a destination of the target version does with the stream:
  reject       it fails the load (or hangs)
  silent-loss  it accepts, but guest state is lost or wrong
  deviation    it accepts harmlessly, yet no conforming source writes it
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum


class Severity(str, Enum):
    REJECT = "reject"
    SILENT_LOSS = "silent-loss"
    DEVIATION = "deviation"


@dataclass(frozen=True, slots=True)
class Violation:
    code: str
    severity: Severity
    channel: str
    offset: int
    message: str
    section: str | None = None

    def as_json(self) -> dict:
        d = asdict(self)
        d["severity"] = self.severity.value
        return d

    def one_line(self) -> str:
        where = f"{self.channel} @ {self.offset}" + (f" [{self.section}]" if self.section else "")
        return f"{self.severity.value:<11} {self.code:<28} {where}: {self.message}"


@dataclass(frozen=True, slots=True)
class CatalogueEntry:
    code: str
    meaning: str
    qemu: str  # the QEMU behaviour or text it mirrors


_C = CatalogueEntry
CATALOGUE: dict[str, CatalogueEntry] = {
    e.code: e
    for e in [
        _C("bad-magic", "the file does not start with QEVM", "Not a migration stream"),
        _C("obsolete-version", "stream version 2", "SaveVM v2 format is obsolete and don't work anymore"),
        _C("unsupported-version", "stream version other than 2 or 3", "Unsupported migration stream version"),
        _C("configuration-missing", "no CONFIGURATION record after the header", "Configuration section missing"),
        _C("configuration-malformed", "the CONFIGURATION record does not decode", "load of the configuration vmstate fails"),
        _C("machine-type-unsupported", "the stream's machine type does not exist in the destination version",
           "qemu-system-x86_64: unsupported machine type (the destination does not start)"),
        _C("multifd-init", "a multifd channel's initial packet: magic, version, id out of range or twice, uuids differ",
           "failed to receive packet via multifd channel N: multifd: received … (the load fails)"),
        _C("multifd-packet", "a multifd packet the destination refuses: magic, version, flags, sizes, block, offset",
           "multifd: received packet … / unknown ram block / offset too long — the destination hangs (VERIFIED)"),
        _C("multifd-packet-size", "next_packet_size differs from the page data of an uncompressed packet",
           "ignored: the destination reads normal_pages pages"),
        _C("multifd-packet-order", "packet_num goes backwards on one channel", "not checked by QEMU; no source does it"),
        _C("multifd-packet-missing", "a packet number (shared counter, 9.0+) is on no channel", "the packet was lost: pages missing, or a SYNC missing and the destination hangs"),
        _C("multifd-sync-count", "a channel's SYNC packets do not match the main stream's sync points",
           "the destination main thread waits for a SYNC that never comes: it hangs (VERIFIED on 10.0)"),
        _C("multifd-channels", "more channels than the destination's multifd-channels",
           "the extra channels are never read: the load completes with their pages missing"),
        _C("multifd-page-in-postcopy", "a multifd channel delivers a page after POSTCOPY_LISTEN",
           "10.1+: channels carry no data in postcopy (the source flushes them before); a late page can overwrite a placed one"),
        _C("postcopy-listen-before-flush", "POSTCOPY_LISTEN while a multifd channel has pages not yet synced",
           "10.1+ syncs every channel in the PART section just before postcopy starts"),
        _C("capability-pair-refused", "postcopy-ram together with multifd on a version that refuses the pair",
           "migrate-set-capabilities refuses it on 8.1 .. 10.0 (allowed in 7.2 and from 10.1)"),
        _C("unknown-capability", "configuration names a capability the destination does not validate", "Received unknown capability %s"),
        _C("ram-mapped-ram-flags", "a page, zero, XBZRLE, HOOK or FLUSH record in a mapped-ram stream", "Unexpected RAM flags: %d"),
        _C("machine-type-mismatch", "machine type differs from the destination's (compared over the received length)", "Machine type received is '%s' and local is '%s'"),
        _C("unknown-section-type", "a top-level record type byte QEMU does not know", "Unknown savevm section type N"),
        _C("unknown-section-id", "PART/END for a section id no START/FULL introduced", "Unknown savevm section N"),
        _C("reused-section-id", "a START reuses the id of an earlier START", "accepted: the newer entry shadows the older"),
        _C("duplicate-device-section", "a FULL section for an idstr/instance already loaded", "accepted: the state is loaded twice"),
        _C("unknown-section", "idstr/instance the destination does not have", "Unknown savevm section or instance '%s' %u"),
        _C("section-version-too-new", "section version above the destination's", "savevm: unsupported version %d for '%s' v%d"),
        _C("section-version-too-old", "section version below the VMSD's minimum_version_id", "%s: incoming version_id %d is too old for local minimum version_id %d"),
        _C("section-not-open", "PART/END for an iterable section that already ended or was never started", "accepted by QEMU; no source writes it"),
        _C("missing-footer", "no 0x7e footer after a section body", "Missing section footer for %s"),
        _C("footer-mismatch", "footer carries another section id", "Mismatched section id in footer for %s - read 0x%x expected 0x%x"),
        _C("device-load-failed", "the destination's own VMSD reads a device body to another length than the source "
           "wrote (a field it sizes, counts or gates differently), or refuses a subsection's version",
           "Missing section footer for %s / %s: incoming version_id %d is too new for local version_id %d / "
           "error while loading state for instance 0x%x of device '%s'"),
        _C("device-subsection-unknown", "a subsection the destination's VMSD of that device does not have",
           "error while loading state for instance 0x%x of device '%s' (vmstate_subsection_load: -ENOENT); "
           "load of migration failed: No such file or directory"),
        _C("device-field-equal-mismatch", "a `... equal` field differs from the destination's own value, or an "
           "`int32 le` field exceeds it", "%x != %x / Invalid value %d expecting positive value <= %d; "
           "Failed to load %s:%s"),
        _C("device-state-not-judged", "never a violation: a section the destination's layout cannot follow to its end "
           "(a custom-coded field, a count from a device property, an unresolved field_exists test), counted in "
           "stats.device_state", "(none: QEMU loads it with code the layout data does not describe)"),
        _C("device-body-mismatch", "a device body does not match its VMSD description", "the destination reads another length and fails at the footer"),
        _C("unknown-command", "MIG_CMD id 0 or beyond the destination's table", "MIG_CMD 0x%x unknown (len 0x%x)"),
        _C("command-bad-length", "a fixed-length command with another length", "%s received with bad length - expecting %zu, got %d"),
        _C("command-malformed", "a variable-length command whose payload does not decode", "CMD_* invalid length / missing nil / invalid version"),
        _C("ping-without-return-path", "PING before OPEN_RETURN_PATH", "CMD_PING (0x%x) received with no return path"),
        _C("postcopy-wrong-state", "a postcopy command out of ADVISE -> DISCARD -> LISTEN -> RUN order", "CMD_POSTCOPY_* in wrong postcopy state (%d)"),
        _C("postcopy-advise-length", "ADVISE payload neither 0 nor 16 bytes", "CMD_POSTCOPY_ADVISE invalid length (%d)"),
        _C("packaged-too-large", "PACKAGED length beyond the stream or its package", "CMD_PACKAGED: Buffer receive fail"),
        _C("package-incomplete", "the PACKAGED data ends without POSTCOPY_RUN or EOF",
           "the nested loader reads past the package buffer and the load fails"),
        _C("package-trailing-data", "records in the PACKAGED data after POSTCOPY_RUN or EOF", "never read: the nested loader has quit"),
        _C("return-path-reopened", "a second OPEN_RETURN_PATH", "CMD_OPEN_RETURN_PATH called when RP already open (not fatal)"),
        _C("postcopy-without-return-path", "POSTCOPY_LISTEN without OPEN_RETURN_PATH",
           "accepted, but the destination cannot request the pages it faults on; no source does this"),
        _C("rp-malformed", "a return-path message of unknown type or wrong length", "Received invalid message 0x%04x length 0x%04x (the source fails)"),
        _C("rp-shut-error", "SHUT with a non-zero value", "Sibling indicated error %d (the source fails)"),
        _C("rp-after-shut", "a return-path message after SHUT", "not read: the source stops at SHUT"),
        _C("rp-pong-unexpected", "a PONG that answers no PING", "traced only"),
        _C("rp-ping-unanswered", "a PING with no PONG on the captured return path", "traced only; the capture may have ended early"),
        _C("rp-bad-page-request", "REQ_PAGES(_ID) for an unknown block or beyond it", "the source fails the page request and the migration"),
        _C("rp-recv-bitmap", "RECV_BITMAP blob with a wrong size or end mark", "ramblock '%s' bitmap size mismatch / end mark incorrect"),
        _C("rp-resume-ack", "RESUME_ACK with a value other than 1", "the source refuses the resume"),
        _C("recovery-command-outside-recovery", "POSTCOPY_RESUME outside postcopy recovery", "illegal resume received (not fatal)"),
        _C("ram-version", "ram section version is not 4", "error while loading state for instance 0x0 of device 'ram'"),
        _C("ram-unknown-flags", "RAM record flags are no known combination", "Unknown combination of migration flags: 0x%x"),
        _C("ram-multifd-flush-unsupported", "MULTIFD_FLUSH sent to a destination older than 8.0", "Unknown combination of migration flags: 0x200"),
        _C("ram-hook-without-rdma", "RAM_SAVE_FLAG_HOOK on a non-RDMA stream", "7.2 fails the section; 10.0 ignores it"),
        _C("ram-compressed-page", "COMPRESS_PAGE record", "7.2: Received an unexpected compressed page unless compress is on; 10.0: unknown flags 0x100"),
        _C("ram-zero-fill", "ZERO record with a non-zero fill byte", "7.2 fills the page with it; 8.2+: Found a zero page with value %d"),
        _C("ram-continue-without-block", "CONTINUE before any page record named a block on this channel", "Ack, bad migration stream! / Illegal RAM offset 0"),
        _C("ram-unknown-block", "a page record names a block MEM_SIZE did not announce", "Can't find block %s"),
        _C("ram-offset-out-of-range", "page offset not inside its block", "Illegal RAM offset %lx"),
        _C("ram-block-unknown", "MEM_SIZE announces a RAMBlock the destination does not have (needs --reference)",
           'Unknown ramblock "%s", cannot accept migration'),
        _C("ram-block-size-mismatch", "MEM_SIZE length differs from the destination's block, which is not resizable",
           "Size mismatch: %s: 0x%x != 0x%x: Invalid argument"),
        _C("ram-mem-size-duplicate", "a MEM_SIZE list announces a block twice", "the second announcement overwrites the first"),
        _C("ram-xbzrle", "XBZRLE record that does not decode", "Failed to load XBZRLE page - wrong compression! / len overflow! / decode error!"),
        _C("ram-page-before-mem-size", "page records before any MEM_SIZE block list", "Can't find block %s"),
        _C("truncated", "the stream ends inside a record", "load of migration failed: Input/output error"),
        _C("malformed", "bytes that cannot be framed any further", "the destination fails at the same place"),
        _C("hostile-length", "a length field beyond any sane bound", "the destination fails allocating or reading it"),
        _C("missing-eof", "the stream ends without QEMU_VM_EOF", "load of migration failed: Input/output error"),
        _C("missing-vmdescription", "no VMDESCRIPTION trailer after EOF", "Expected vmdescription section, but got %d (warning only)"),
        _C("vmdescription-truncated", "the stream ends inside the VMDESCRIPTION trailer", "accepted: 7.2 and 10.0 complete (checked on both)"),
        _C("vmdescription-malformed", "the VMDESCRIPTION trailer is not valid JSON", "not read by the destination"),
        _C("trailing-data", "bytes after the trailer", "ignored by the destination"),
        _C("unsupported", "a stream feature migconform cannot decode yet", "—"),
        # --- switchover-ack and the downtime SLA (conformance/switchover.py, conformance/downtime.py) ---
        _C("switchover-before-ack", "the source switched over before SWITCHOVER_ACK while its guest ran",
           "a QEMU source with switchover-ack waits for the ack unless the VM is stopped (no conforming source does this)"),
        _C("switchover-ack-unreachable", "the destination waits for a device that never sends DEV_INIT_DATA_SENT "
           "(or does not use switchover-ack at all): no SWITCHOVER_ACK ever comes",
           "the running source stays 'active' for ever (VERIFIED 10.0, destination with switchover-ack off)"),
        _C("init-data-sent-unexpected", "DEV_INIT_DATA_SENT from a device the destination does not count, or with nothing pending",
           "Received INIT_DATA_SENT but switchover ack is not used / qemu_loadvm_approve_switchover failed, err=-22"),
        _C("downtime-limit-exceeded", "proposed SEND_SRC_DOWNTIME: source downtime + destination load time reached the abort limit at a check point",
           "the destination aborts the load (RFC 'abort on destination if switchover limit exceeded', never merged)"),
        # --- reference models: multifd RAM under sync semantics (conformance/ram_model.py) and VFIO
        # --- device-state reassembly over multifd (conformance/vfio_model.py) ---
        _C("stale-page", "a page of sync round N is written after the same page of round N+1 (only when the sync barrier is broken)",
           "silent: the guest keeps the older contents (the multifd sync exists to prevent it)"),
        _C("page-race", "two lanes send different contents for the same page between the same two sync points",
           "no order between channels: the page ends with whichever write came last"),
        _C("sync-deadlock", "the main stream waits at a sync point for a channel's SYNC that never comes",
           "the destination main thread blocks for ever: it hangs, QMP unanswered (VERIFIED on 10.0)"),
        _C("sync-unreleased", "a channel has packets behind a SYNC the main stream never matches",
           "the channel thread blocks until cleanup: the packets after the SYNC are never loaded"),
        _C("queue-cap-exceeded", "a VFIO state buffer would take the device's queued buffers above its cap",
           "%s: queuing state buffer %u would exceed the size max of %lu (10.1 x-migration-max-queued-buffers-size)"),
        _C("state-buffer-missing", "a VFIO device's state buffers end with a gap or without the config packet",
           "the load thread waits for the missing buffer for ever: the destination hangs"),
        _C("state-buffer-duplicate", "a VFIO state buffer idx arrives twice", "%s: state buffer %u already filled"),
        _C("state-buffer-after-config", "a VFIO state buffer above the config packet's idx, or a second config packet",
           "accepted; the load thread stops at the config index and never writes what lies above it"),
        _C("state-buffer-unknown-device", "a device-state packet for an idstr/instance the destination does not have",
           "Unknown idstr %s or instance id %u for load state buffer"),
        _C("state-buffer-not-multifd", "a device-state packet for a device not doing multifd transfer",
           "%s: got device state packet but not doing multifd transfer"),
        _C("state-buffer-too-short", "a VFIODeviceStatePacket shorter than its 12-byte header",
           "%s: packet too short at %zu (min is %zu)"),
        _C("state-buffer-version", "a VFIODeviceStatePacket version other than 0", "%s: packet has unknown version %u"),
        _C("state-buffer-invalid-idx", "a VFIODeviceStatePacket idx of UINT32_MAX", "%s: packet index is invalid"),
        _C("switchover-start-missing", "VFIO state buffers queued but no SWITCHOVER_START",
           "the load thread starts on SWITCHOVER_START: without it the buffers are never written (SOURCE reading)"),
    ]
}


def describe(code: str) -> CatalogueEntry | None:
    return CATALOGUE.get(code)


def catalogue_markdown() -> str:
    """The catalogue as the table in docs/violations.md."""
    rows = ["| code | meaning | QEMU behaviour it mirrors |", "| --- | --- | --- |"]
    for e in CATALOGUE.values():
        rows.append(f"| `{e.code}` | {e.meaning} | {e.qemu.replace('|', '/')} |")
    return "# Violation codes\n\nGenerated from `conformance/violations.py` (`migconform catalogue --markdown`).\n" \
           "Severity is decided per target version; see the README.\n\n" + "\n".join(rows) + "\n"
