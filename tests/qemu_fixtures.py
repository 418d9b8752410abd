"""pytest plugin: real QEMU binaries for tests (loaded by tests/conftest.py).

* `--qemu VERSION=PATH` (repeatable) points the suite at one's own binaries;
* `qemu(version)` gives a binary, or skips with how to install it — except under CI=true,
  where a missing binary fails the test (CI must have both versions);
* `capture(version, machine, devices, **kw)` captures a stream once per session per arguments.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import pytest

from conformance.qemu import CaptureResult, QemuBinary, QemuNotFound, capture_stream, discover, require

QEMU_VERSIONS = ("7.2", "10.0")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("migconform").addoption(
        "--qemu", action="append", default=[], metavar="VERSION=PATH",
        help="use this QEMU binary for VERSION (repeatable), e.g. --qemu 10.0=/opt/qemu/bin/qemu-system-x86_64")


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes", "on")


def _missing(message: str) -> None:
    if _ci():
        pytest.fail(f"{message} (CI is set: every QEMU version must be present)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def qemu_pairs(pytestconfig: pytest.Config) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in pytestconfig.getoption("qemu") or []:
        version, sep, path = item.partition("=")
        if not sep or not version.strip() or not path.strip():
            raise pytest.UsageError(f"--qemu takes VERSION=PATH, got {item!r}")
        pairs[version.strip()] = path.strip()
    return pairs


@pytest.fixture(scope="session")
def qemu_binaries(qemu_pairs: dict[str, str]) -> dict[str, QemuBinary]:
    try:
        return discover(qemu_pairs)
    except QemuNotFound as e:  # a binary named explicitly (--qemu, MIGCONFORM_QEMU) is wrong
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def qemu(qemu_binaries: dict[str, QemuBinary], qemu_pairs: dict[str, str]) -> Callable[[str], QemuBinary]:
    """qemu("10.0") -> QemuBinary, or skip (fail under CI) with how to install it."""

    def get(version: str) -> QemuBinary:
        if version in qemu_binaries:
            return qemu_binaries[version]
        try:
            return require(version, qemu_pairs)
        except QemuNotFound as e:
            _missing(str(e))
            raise  # unreachable: skip/fail raise

    return get


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, Path):
        return str(value)
    return value


@pytest.fixture(scope="session")
def capture(qemu: Callable[[str], QemuBinary], tmp_path_factory: pytest.TempPathFactory) -> Callable[..., CaptureResult]:
    """capture("7.2", "pc-i440fx-7.2", "none", mem_mb=64, ...) -> CaptureResult, made once per
    session for the same arguments. The file is shared: copy it before altering it."""
    made: dict[Any, CaptureResult] = {}

    def get(version: str, machine: str = "pc-i440fx-7.2", devices: str = "none", **kw: Any) -> CaptureResult:
        key = (version, machine, devices, _freeze(kw))
        if key not in made:
            binary = qemu(version)
            out = tmp_path_factory.mktemp(f"capture-{version}-{machine}") / "stream.mig"
            made[key] = capture_stream(binary, out, machine=machine, devices=devices, **kw)
        return made[key]

    return get
