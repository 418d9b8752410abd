"""Which accelerator runs guests here. /dev/kvm existing and QEMU's query-kvm saying
`enabled` is not enough: on some hosts (nested, sandboxed) KVM initialises but a guest makes
no progress under it. So a guest of ours is booted and its heartbeat watched."""

from __future__ import annotations

import functools
import os

from conformance.qemu import reaper
from conformance.qemu.binaries import QemuBinary, QemuError
from conformance.qemu.process import QemuProcess


@functools.lru_cache(maxsize=8)
def kvm_runs_guests(binary: QemuBinary, within: float = 8.0) -> bool:
    """Does the `devices` boot program's heartbeat move under -accel kvm within `within` s?"""
    from conformance.qemu import guests  # guests imports linux_guest, which needs nothing of this

    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    with reaper.temporary_directory("migconform-kvm-probe-") as d:  # removed on a signal too
        g = guests.guest("devices", d)
        try:
            with QemuProcess(binary, ["-accel", "kvm", "-machine", "pc", "-m", "32M", *g.args],
                             name="kvm-probe") as q:
                q.cmd("cont")
                try:
                    guests.wait_started(q, g, within)
                    return True
                except TimeoutError:
                    return False
        except QemuError:
            return False


def default_accel(binaries) -> str:
    """kvm when a guest runs under it with every binary, else tcg."""
    return "kvm" if all(kvm_runs_guests(b) for b in binaries) else "tcg"
