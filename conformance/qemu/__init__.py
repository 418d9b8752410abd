"""The only room of migconform that starts processes, speaks QMP or opens sockets.

The names below are loaded on first use (PEP 562), not when the package is: importing
`conformance.qemu.devices` for its device-set names (a command's parser) must not start
asyncio and qemu.qmp, which the QMP modules pull in.
"""

import importlib

_WHERE = {
    "conformance.qemu.binaries": ("QemuBinary", "QemuError", "QemuNotFound", "cache_dir", "discover", "dump_vmstate",
                                  "find_binary", "machine_types", "parse_pairs", "require"),
    "conformance.qemu.capsession": ("CapSession", "HostFacts"),
    "conformance.qemu.capture": ("CaptureResult", "capture_stream", "vm_args"),
    "conformance.qemu.destination": ("LoadVerdict", "feed", "load_stream", "start_destination"),
    "conformance.qemu.devices": ("DEVICE_SETS", "device_args", "make_ram_file", "ram_args"),
    "conformance.qemu.process": ("MigrationFailed", "QemuExited", "QemuProcess", "QemuTimeout", "QmpCommandError",
                                 "error_lines"),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
