"""The only room of migconform that starts processes, speaks QMP or opens sockets."""

from conformance.qemu.binaries import (
    QemuBinary,
    QemuError,
    QemuNotFound,
    cache_dir,
    discover,
    dump_vmstate,
    machine_types,
    parse_pairs,
    require,
)
from conformance.qemu.capsession import CapSession, HostFacts
from conformance.qemu.capture import CaptureResult, capture_stream, vm_args
from conformance.qemu.destination import LoadVerdict, feed, load_stream, start_destination
from conformance.qemu.devices import DEVICE_SETS, device_args, make_ram_file, ram_args
from conformance.qemu.process import MigrationFailed, QemuExited, QemuProcess, QemuTimeout, QmpCommandError, error_lines

__all__ = [
    "CapSession", "CaptureResult", "DEVICE_SETS", "HostFacts", "LoadVerdict", "MigrationFailed", "QemuBinary", "QemuError", "QemuExited",
    "QemuNotFound", "QemuProcess", "QemuTimeout", "QmpCommandError", "cache_dir", "capture_stream",
    "device_args", "discover", "dump_vmstate", "error_lines", "feed", "load_stream", "machine_types",
    "make_ram_file", "parse_pairs", "ram_args", "require", "start_destination", "vm_args",
]
