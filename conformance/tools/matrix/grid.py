"""The matrix's grid: versions x machine types x device sets x capability sets, validated
against the compat data (no QEMU needed), and the guest command line of a cell."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from conformance.qemu import DEVICE_SETS
from conformance.qemu.guests import GUESTS
from conformance.rules import compat
from conformance.tools.sides import Sides, SidesError, parse_axis
from conformance.versions import FACTS, VERSIONS, release, version_key

DEFAULT_VERSIONS = VERSIONS  # the modelled ones

# Shared machine types of interest; each version's newest i440fx/q35 are added (default_machines).
DEFAULT_MACHINES: tuple[str, ...] = (
    "pc-i440fx-2.12", "pc-q35-2.12", "pc-i440fx-5.2", "pc-q35-5.2", "pc-i440fx-7.2", "pc-q35-7.2",
)

# A fixed -uuid for both ends: validate-uuid makes the destination compare the source's.
MATRIX_UUID = "6b3f0c4e-2f6a-4c1e-9d7e-1a2b3c4d5e6f"

# Device sets: the adapter's named sets, plus one of the matrix's own built from the
# adapter's extra_args (passed verbatim to both ends): storage, display, serial and two virtio
# devices with no host set-up, valid for 7.2 and 10.0 on both machine families.
EXTRA_DEVICE_SETS: dict[str, tuple[str, ...]] = {
    "ahci-cd+vga+serial+balloon+rng": (
        "-device", "ich9-ahci,id=ahci0", "-device", "ide-cd,bus=ahci0.0",  # an empty CD-ROM
        "-device", "VGA",
        "-chardev", "null,id=ser0", "-device", "isa-serial,chardev=ser0",
        "-device", "virtio-balloon-pci", "-device", "virtio-rng-pci",
    ),
}
MATRIX_DEVICE_SETS: tuple[str, ...] = tuple(DEVICE_SETS) + tuple(EXTRA_DEVICE_SETS)
DEFAULT_DEVICES: tuple[str, ...] = MATRIX_DEVICE_SETS

# Named capability sets, each checked to migrate via a file on 7.2 and 10.0 (both directions,
# stopped guest). "a+b" combines capabilities; any capability the compat data knows may be
# named, those in EXCLUDED_CAPABILITIES are refused with the reason.
CAPABILITY_SETS: dict[str, tuple[str, ...]] = {
    "none": (),
    # validated: listed in the configuration record, and every MEM_SIZE entry carries the block's
    # address (mr_addr); the guest's private RAM is still sent (only shared RAM would be skipped)
    "x-ignore-shared": ("x-ignore-shared",),
    # the configuration record carries the source's UUID; both ends get the same -uuid
    "validate-uuid": ("validate-uuid",),
    # harmless on a stopped guest: a single pass sends no XBZRLE page
    "xbzrle": ("xbzrle",),
    # adds a 'dirty-bitmap' section (no bitmap to send) and MIG_CMD_POSTCOPY_ADVISE
    "dirty-bitmaps": ("dirty-bitmaps",),
    "events": ("events",),
}
DEFAULT_CAPS: tuple[str, ...] = ("none", "x-ignore-shared", "validate-uuid")

EXCLUDED_CAPABILITIES: dict[str, str] = {
    "return-path": "needs a bidirectional channel; a file migration fails ('Unable to write to file: Bad file descriptor')",
    "switchover-ack": "requires return-path",
    "postcopy-ram": "set by the postcopy mode (--modes postcopy), which migrates into a live destination",
    "postcopy-preempt": "needs postcopy-ram",
    "postcopy-blocktime": "postcopy only",
    "mapped-ram": "needs a seekable file: URI ('Migration requires seekable transport'); the matrix uses fd:",
    "zero-copy-send": "needs locked memory (memlock) for MSG_ZEROCOPY",
    "rdma-pin-all": "needs RDMA",
    "x-colo": "COLO needs a secondary VM",
    "background-snapshot": "needs userfaultfd write-protect (snapshots, not migration)",
    "pause-before-switchover": "the source stops in pre-switchover until migrate-continue",
    "release-ram": "postcopy only",
}


# Accelerators, an axis. "tcg" is also what QEMU picks without -accel (the matrix's cells ran
# under it before this axis existed); the command line's default is kvm where a guest really
# runs under it (conformance.qemu.accel.kvm_runs_guests), else tcg.
ACCELS: tuple[str, ...] = ("tcg", "kvm")
# How a running guest meets its migration, an axis: "live" (precopy while it keeps running and
# dirtying: the default) or "stopped" (booted, then stopped before `migrate`: programmed device
# state, no pages dirtied in flight). A paused guest has only "live" (it never runs).
# Two more go straight into a live destination over loopback TCP (conformance.qemu.
# running_migration), as every cell with multifd among its capabilities does: "postcopy"
# (postcopy-ram on both sides, the source switched by migrate-start-postcopy while its guest
# runs) and "nonconverging" (downtime-limit 1 ms at 1 MiB/s: precopy cannot end; the source
# is stopped after NONCONVERGING_SECONDS and the migration then completes).
MIGRATE_MODES: tuple[str, ...] = ("live", "stopped", "postcopy", "nonconverging")
DIRECT_MODES: tuple[str, ...] = ("postcopy", "nonconverging")
NONCONVERGING_SECONDS = 4.0


class MatrixError(Exception):
    """A usage or set-up error (one-line message)."""


def _mkey(machine: str) -> tuple:
    m = re.fullmatch(r"pc-(i440fx|q35)-(\d+)\.(\d+)(?:\.(\d+))?", machine)
    if not m:
        return (2, machine)
    return (0, int(m[2]), int(m[3]), int(m[4] or 0), m[1])


def safe_name(text: str) -> str:
    """`text` as a token of a file name."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text)


def parse_caps(name: str) -> tuple[str, ...]:
    """A capability set name: a named set ("none", "validate-uuid"), or capabilities joined
    with '+' ("x-ignore-shared+xbzrle"). Raises MatrixError for unknown or excluded ones."""
    name = name.strip()
    if name in CAPABILITY_SETS:
        return CAPABILITY_SETS[name]
    known = compat.capabilities().capabilities
    out = []
    for c in name.split("+"):
        c = c.strip()
        if not c:
            raise MatrixError(f"capability set {name!r}: empty capability name")
        if c in EXCLUDED_CAPABILITIES:
            raise MatrixError(f"capability {c!r} cannot be used in the matrix: {EXCLUDED_CAPABILITIES[c]}")
        if c not in known:
            raise MatrixError(f"unknown capability {c!r} (named sets: {', '.join(CAPABILITY_SETS)}; or join "
                              "capabilities with '+')")
        out.append(c)
    return tuple(dict.fromkeys(out))


def newest_machine(version: str, family: str) -> str | None:
    """The newest machine type of `family` ("pc-q35") that QEMU `version` offers."""
    ms = [m for m in compat.load(version).machine_types if m.family == family]
    return max(ms, key=lambda m: m.level).name if ms else None


def default_machines(versions: Sequence[str]) -> list[str]:
    """DEFAULT_MACHINES that every version offers, plus each version's newest pc-i440fx and
    pc-q35 (which older versions lack: those cells are expected failures)."""
    shared = [m for m in DEFAULT_MACHINES if all(compat.load(v).has_machine(m) for v in versions)]
    newest = [n for v in versions for fam in ("pc-i440fx", "pc-q35") if (n := newest_machine(v, fam))]
    return sorted(dict.fromkeys(shared + newest), key=_mkey)


@dataclass(frozen=True)
class CellSpec:
    src: str  # "7.2"
    dst: str
    machine: str
    devices: str  # a MATRIX_DEVICE_SETS name
    caps: str  # a capability set name (see parse_caps)
    guest: str = "paused"  # a conformance.qemu.guests name
    sided: str = "none"  # a one-sided settings set (see conformance.tools.sides.parse_axis)
    accel: str = "tcg"  # ACCELS
    mode: str = "live"  # MIGRATE_MODES

    @property
    def id(self) -> str:
        return f"{self.src}->{self.dst}/{self.machine}/{self.row}/{self.caps}"

    @property
    def row(self) -> str:
        """The device set, with the guest and the one-sided set when they are not the defaults."""
        return self.devices + (f" guest={self.guest}" if self.guest != "paused" else "") + \
            (f" {self.sided}" if self.sided != "none" else "") + \
            (f" accel={self.accel}" if self.accel != "tcg" else "") + \
            {"stopped": " stopped-first", "postcopy": " postcopy", "nonconverging": " nonconverging"}.get(self.mode, "")

    @property
    def direct(self) -> bool:
        """Does the cell migrate straight into a live destination over TCP (postcopy,
        nonconverging, multifd), not through a file loaded afterwards?"""
        return self.mode in DIRECT_MODES or "multifd" in self.capabilities

    @property
    def direct_name(self) -> str:
        """A file-name stem for a direct cell's recorded channels."""
        return "_".join(str(k) for k in self.capture_key[:5] + self.capture_key[6:]) + "_" + \
            hashlib.sha256(repr(self.capture_key).encode()).hexdigest()[:8]

    @property
    def migration_capabilities(self) -> tuple[str, ...]:
        """The capabilities both sides get: the set's, and postcopy-ram in the postcopy mode."""
        return self.capabilities + (("postcopy-ram",) if self.mode == "postcopy" else ())

    @property
    def sides(self) -> Sides:
        return parse_axis(self.sided)

    @property
    def direction(self) -> str:
        return f"{self.src}->{self.dst}"

    @property
    def capabilities(self) -> tuple[str, ...]:
        return parse_caps(self.caps)

    @property
    def capture_key(self) -> tuple:
        """What the source's capture depends on: not the destination's own settings. A direct
        cell is its own migration (the destination's version is in its key)."""
        if self.direct:
            return (self.src, self.machine, self.devices, self.caps, self.guest, self.sides.source_key, self.accel,
                    self.mode, self.dst)
        return (self.src, self.machine, self.devices, self.caps, self.guest, self.sides.source_key, self.accel,
                self.mode)

    @property
    def reference_key(self) -> tuple:
        """A paused capture by the destination's version, of the same guest (layouts to compare)."""
        return (self.dst, self.machine, self.devices, self.caps, "paused", "", self.accel, "live")

    @property
    def known_fault(self) -> str | None:
        """A fault of the source binary this cell can meet (versions.FACTS), as a label."""
        return self.known_fault_and_kinds[0]

    @property
    def known_fault_and_kinds(self) -> tuple[str | None, tuple[str, ...]]:
        """(label, the real outcome kinds that are that fault) or (None, ())."""
        rows = [FACTS.get(release(v)) for v in (self.src, self.dst)]
        if self.mode == "postcopy" and "multifd" in self.capabilities and \
                all(r is not None and r.multifd_postcopy_destination_aborts for r in rows):
            return (f"known fault of QEMU {self.dst}: it accepts multifd with postcopy-ram, and its destination "
                    "aborts once postcopy starts (util/yank.c: assertion `QLIST_EMPTY(&entry->yankfns)`; 10.0 "
                    "refuses the pair)", ("failed",))
        row = rows[0]
        if self.accel == "tcg" and self.guest != "paused" and self.mode != "stopped" and row is not None and \
                row.tcg_dirty_tracking_loses_writes:
            kinds = ("ram-differs", "converged") if self.mode == "nonconverging" else ("ram-differs",)
            return (f"known fault of QEMU {self.src}: under TCG a running guest's writes during the migration can "
                    "be lost (TCG dirty tracking, fixed upstream in 9.0); the destination's RAM then differs"
                    + (", and a migration kept from converging can converge" if self.mode == "nonconverging" else ""),
                    kinds)
        return None, ()


@dataclass(frozen=True)
class Grid:
    versions: tuple[str, ...]
    machines: tuple[str, ...]
    devices: tuple[str, ...]
    caps: tuple[str, ...]
    guests: tuple[str, ...] = ("paused",)
    sided: tuple[str, ...] = ("none",)
    accels: tuple[str, ...] = ("tcg",)
    modes: tuple[str, ...] = ("live",)

    @property
    def directions(self) -> list[tuple[str, str]]:
        return [(s, d) for s in self.versions for d in self.versions]

    def cells(self) -> list[CellSpec]:
        """Ordered so that the cells of one capture are adjacent (source first)."""
        return [CellSpec(s, d, m, dev, c, g, o, a, mo) for c in self.caps for m in self.machines
                for dev in self.devices for g in self.guests for o in self.sided for a in self.accels
                for mo in self._modes(g) for s in self.versions for d in self.versions]

    def _modes(self, guest: str) -> tuple[str, ...]:
        return self.modes if guest != "paused" else ("live",)

    @property
    def rows(self) -> list[str]:
        return [CellSpec("", "", "", dev, "", g, o, a, mo).row for dev in self.devices for g in self.guests
                for o in self.sided for a in self.accels for mo in self._modes(g)]

    def as_json(self) -> dict:
        return {"versions": list(self.versions), "machines": list(self.machines), "devices": list(self.devices),
                "capabilities": {c: list(parse_caps(c)) for c in self.caps},
                "guests": list(self.guests), "one_sided": list(self.sided), "accels": list(self.accels),
                "modes": list(self.modes), "rows": self.rows,
                "directions": [f"{s}->{d}" for s, d in self.directions]}


def build_grid(versions: Sequence[str] = DEFAULT_VERSIONS, machines: Sequence[str] | None = None,
               devices: Sequence[str] | None = None, caps: Sequence[str] | None = None,
               guests: Sequence[str] | None = None, sided: Sequence[str] | None = None,
               user_sets: Mapping[str, Sequence[str]] | None = None, accels: Sequence[str] | None = None,
               modes: Sequence[str] | None = None) -> Grid:
    """The grid, validated against the compat data (no QEMU needed). MatrixError on bad names.
    `user_sets`: device sets of the user's (devsets.load_sets), named beside the built-in ones."""
    vs = []
    for v in versions:
        try:
            vs.append(compat.load(v).version)
        except compat.UnknownVersion as e:
            raise MatrixError(str(e)) from None
    vs = sorted(dict.fromkeys(vs), key=version_key)
    if not vs:
        raise MatrixError("no QEMU version to run")
    ms = list(dict.fromkeys(machines)) if machines else default_machines(vs)
    for m in ms:
        if not any(compat.load(v).has_machine(m) for v in vs):
            raise MatrixError(f"machine type {m!r} exists in none of QEMU {', '.join(vs)}")
    ds = list(dict.fromkeys(devices)) if devices else list(DEFAULT_DEVICES)
    for d in ds:
        if d not in MATRIX_DEVICE_SETS and d not in (user_sets or {}):
            raise MatrixError(f"unknown device set {d!r} (known: {', '.join([*MATRIX_DEVICE_SETS, *(user_sets or {})])}"
                              "; sets of your own: --devices-file)")
    cs = list(dict.fromkeys(caps)) if caps else list(DEFAULT_CAPS)
    for c in cs:
        parse_caps(c)
    gs = list(dict.fromkeys(guests)) if guests else ["paused"]
    for g in gs:
        if g not in GUESTS:
            raise MatrixError(f"unknown guest {g!r} (known: {', '.join(GUESTS)})")
    os_ = list(dict.fromkeys(sided)) if sided else ["none"]
    for o in os_:
        try:
            parse_axis(o)
        except SidesError as e:
            raise MatrixError(str(e)) from None
    acs = list(dict.fromkeys(accels)) if accels else ["tcg"]
    for a in acs:
        if a not in ACCELS:
            raise MatrixError(f"unknown accelerator {a!r} (known: {', '.join(ACCELS)})")
    mos = list(dict.fromkeys(modes)) if modes else ["live"]
    for mo in mos:
        if mo not in MIGRATE_MODES:
            raise MatrixError(f"unknown migration mode {mo!r} (known: {', '.join(MIGRATE_MODES)})")
    return Grid(tuple(vs), tuple(ms), tuple(ds), tuple(cs), tuple(gs), tuple(os_), tuple(acs), tuple(mos))


def guest_args(devices: str, caps: Iterable[str], guest_first: Sequence[str] = (),
               user_sets: Mapping[str, Sequence[str]] | None = None,
               extra_devices: Sequence[str] = ()) -> tuple[str, list[str]]:
    """(adapter device-set name, extra_args) for a matrix device set and capability set;
    `guest_first`: the guest's own arguments, put first (its UART must be COM1); a set of
    `user_sets` and `extra_devices` (--device) come after the guest's."""
    extra: list[str] = list(guest_first)
    if devices in EXTRA_DEVICE_SETS:
        name = "none"
        extra += EXTRA_DEVICE_SETS[devices]
    elif user_sets and devices in user_sets and devices not in DEVICE_SETS:
        name = "none"
        extra += user_sets[devices]
    else:
        name = devices
    extra += extra_devices
    if "validate-uuid" in caps:
        extra += ["-uuid", MATRIX_UUID]
    return name, extra
