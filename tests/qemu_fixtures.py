"""The suite's QEMU fixtures, options and markers: `conformance.pytest_plugin` (loaded by
tests/conftest.py through this module, so that the suite works whether or not the installed
`migconform` pytest11 entry point already loaded the plugin).

Fixtures (see conformance/pytest_plugin.py): `qemu_pairs`, `qemu_binaries`, `qemu(version)`
(skip, or fail under CI=true, when a version is missing), `capture(version, machine, devices,
**kw)`; option `--qemu VERSION=PATH` (repeatable).
"""

from __future__ import annotations

import pytest

from conformance import pytest_plugin as _plugin
from conformance.pytest_plugin import QEMU_VERSIONS  # noqa: F401  (kept importable from here)

PLUGIN_NAME = "migconform"


@pytest.hookimpl(tryfirst=True)
def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    # registering the plugin here applies its own pytest_addoption (a historic hook) at once
    if not pluginmanager.is_registered(_plugin) and not pluginmanager.has_plugin(PLUGIN_NAME):
        pluginmanager.register(_plugin, PLUGIN_NAME)


@pytest.fixture(scope="module")
def linux():
    """The Linux guest (Debian's kernel, our initramfs) that scripts/setup.sh prepares."""
    from conformance.qemu import guests

    try:
        return guests.guest("linux", "/nonexistent-unused")
    except ValueError as e:
        pytest.fail(f"{e}: the Linux guest is part of the set-up (scripts/setup.sh)")
