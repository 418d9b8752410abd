"""Which accelerator runs guests here. /dev/kvm existing and QEMU's query-kvm saying
`enabled` is not enough: on some hosts (nested, sandboxed) KVM initialises but a guest makes
no progress under it. So a guest of ours is booted and its heartbeat watched: the `ticker`
boot sector, which halts and counts timer interrupts, so that KVM passes only where a halted
vCPU is woken by the PIT, as a Linux kernel needs. (Seen here: under KVM, SeaBIOS halts
waiting for the floppy's interrupt and a -kernel boot crawls through the kernel's
decompressor without ever printing; a probe whose guest runs with interrupts off once booted
could pass whenever SeaBIOS got through.)"""

from __future__ import annotations

import functools
import os

from conformance.qemu import reaper
from conformance.qemu.binaries import QemuBinary, QemuError
from conformance.qemu.process import QemuProcess


TICKS = 5  # timer wake-ups to see (18.2 Hz: about 0.3 s of a guest that runs)
PROBE_SECONDS = 8.0  # how long the default probe waits for them


def runs_guests(binary: QemuBinary, accel: str, within: float = PROBE_SECONDS) -> bool:
    """Does the `ticker` boot program count TICKS timer wake-ups under `-accel accel` within
    `within` s?"""
    from conformance.qemu import guests  # guests imports linux_guest, which needs nothing of this

    with reaper.temporary_directory("migconform-accel-probe-") as d:  # removed on a signal too
        g = guests.guest("ticker", d)
        try:
            with QemuProcess(binary, ["-accel", accel, "-machine", "pc", "-m", "32M", *g.args],
                             cmd_timeout=within, name=f"{accel}-probe") as q:
                q.cmd("cont")
                return guests.counter_reaches(q, g, TICKS, within)
        except QemuError:
            return False


@functools.lru_cache(maxsize=8)
def kvm_runs_guests(binary: QemuBinary, within: float = PROBE_SECONDS) -> bool:
    """runs_guests under kvm (False without a usable /dev/kvm)."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    return runs_guests(binary, "kvm", within)


def default_accel(binaries) -> str:
    """kvm when a guest runs under it with every binary, else tcg."""
    return "kvm" if all(kvm_runs_guests(b) for b in binaries) else "tcg"
