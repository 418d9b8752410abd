"""A destination profile read from a real destination over QMP: `--dest-qemu PATH` starts that
binary with the stream's machine type (paused, no devices) and asks it; `--dest-qmp SOCKET`
asks a destination that is already running.

What QMP tells: the version (query-version), the machine type it runs (the QOM type of
/machine, "pc-q35-7.2-machine"; an alias is resolved by the binary itself), the migration
capabilities (query-migrate-capabilities) and parameters (query-migrate-parameters). The -global settings of the `migration` object are not readable
over QMP (the object is not in the QOM tree): they are the machine type's (compat data)
unless given with --dest-global.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Mapping

from qemu.qmp import QMPClient, QMPError

from conformance.qemu.binaries import QemuBinary, QemuError
from conformance.qemu.process import QemuProcess

TIMEOUT = 10.0
# parameters judged by rules/settings.py (the rest of query-migrate-parameters is not kept)
KEPT_PARAMETERS = ("multifd-channels", "zero-page-detection", "multifd-compression")


QUERIES = ("query-version", ("qom-get", {"path": "/machine", "property": "type"}), "query-migrate-capabilities",
           "query-migrate-parameters")


def _settings(version: dict, machine_type: str, caps: list, params: dict) -> dict:
    """configure() keyword arguments from the QMP answers."""
    release = f"{version['qemu']['major']}.{version['qemu']['minor']}"
    return {"version": release, "machine": machine_type.removesuffix("-machine"),
            "capabilities": {c["capability"]: bool(c["state"]) for c in caps if c.get("state")},
            "parameters": {k: params[k] for k in KEPT_PARAMETERS if k in params}}


def from_binary(binary: QemuBinary, machine: str, globals_: tuple[str, ...] = ()) -> dict:
    """Start `binary` with `machine` (and the destination's -global settings) and read it."""
    args = ["-machine", machine, *[a for g in globals_ for a in ("-global", g)]]
    with QemuProcess(binary, args, name=f"profile-{binary.version}") as q:
        return _settings(*(q.cmd(c) if isinstance(c, str) else q.cmd(c[0], c[1]) for c in QUERIES))


def from_socket(path: str | Path, timeout: float = TIMEOUT) -> dict:
    """Read a running destination through its QMP unix socket (QemuError, one line, if it cannot)."""

    async def ask() -> list[Any]:
        client = QMPClient("migconform-profile")
        await client.connect(str(path))
        try:
            return [await (client.execute(c) if isinstance(c, str) else client.execute(*c)) for c in QUERIES]
        finally:
            await client.disconnect()

    loop = asyncio.new_event_loop()
    try:
        answers = loop.run_until_complete(asyncio.wait_for(ask(), timeout))
    except (QMPError, OSError, asyncio.TimeoutError) as e:
        raise QemuError(f"{path}: no QMP answer: {e!r}") from None
    finally:
        loop.close()
    return _settings(*answers)


def describe(settings: Mapping[str, Any]) -> str:
    return (f"QEMU {settings['version']}, machine {settings['machine']}, capabilities "
            f"{sorted(settings['capabilities']) or 'none'}, parameters {settings['parameters']}")
