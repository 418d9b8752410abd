"""pytest plugin of migconform (entry point `pytest11: migconform`).

Options (group "migconform"):
* `--qemu VERSION=PATH` (repeatable): use this QEMU binary for VERSION;
* `--captures DIR` (repeatable): every stream file and capture directory under DIR becomes a
  test item that runs the conformance checks (`migconform check`) and fails with the violation
  lines; `--captures-target VERSION` (repeatable, default the newest modelled) judges them as
  that destination. (pytest's own `--capture` is its output-capturing option, hence the name.)
  Write `--captures=DIR` (one word): pytest looks for its rootdir and ini file among the
  command-line words before plugins add their options, and takes a separate DIR for a test path.
* `--migconform-profile quick|ci|fuzz`: load that hypothesis profile; the environment variable
  HYPOTHESIS_PROFILE does the same when it names a registered profile (nothing asked: the
  project's own choice stands). The three profiles are registered when the plugin is imported
  (quick: 30 examples, ci: 150, fuzz: 20000; no deadline); a conftest.py registering its own
  under those names afterwards wins.

Markers: `qemu` (needs real QEMU binaries), `matrix` (version x machine-type matrix runs),
`slow`, and `capture` (the items made from `--captures`).

Fixtures: `qemu_pairs` (the --qemu pairs), `qemu_binaries` (discovered binaries by version),
`qemu(version)` (a binary, or a skip saying how to install it; under CI=true a missing binary
fails), `capture(version, machine="pc-i440fx-7.2", devices="none", **kw)` (a real capture,
made once per session per arguments).

Capture items are named `migconform::captures::<path under DIR>[<target>]`: JUnit XML shows
them as class `migconform.captures`, test `<path>[<target>]`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from conformance.versions import NEWEST, VERSIONS

QEMU_VERSIONS = VERSIONS
PROFILE_NAMES = ("quick", "ci", "fuzz")
MARKERS = {
    "qemu": "needs real QEMU binaries (skipped with a reason when a version is absent; fails under CI=true)",
    "matrix": "runs over a QEMU version x machine type matrix",
    "slow": "long real-QEMU or hypothesis runs; deselect with -m 'not slow'",
    "capture": "conformance check of a user's capture (made by --captures DIR)",
}


# ---------------------------------------------------------------- hypothesis profiles

def register_profiles() -> None:
    """quick (development), ci, fuzz (long campaigns): the only place they are defined.
    Registered when the plugin is imported: installed as an entry point that is before any
    conftest.py, so a project that registers its own profiles under these names keeps them
    (hypothesis' built-in "ci" is replaced)."""
    from hypothesis import HealthCheck, settings

    settings.register_profile("quick", max_examples=30, deadline=None)
    settings.register_profile("ci", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    # A campaign draws at random and keeps what it finds. Under CI=true hypothesis's default is
    # its own "ci" profile (derandomize, no database), which every profile above inherits; HypoFuzz
    # refuses derandomized tests, so fuzz starts from hypothesis's plain default.
    settings.register_profile("fuzz", settings.get_profile("default"), max_examples=20000, deadline=None,
                              derandomize=False, suppress_health_check=list(HealthCheck))


register_profiles()


# ---------------------------------------------------------------- options, markers

def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("migconform", "migconform (QEMU migration stream conformance)")
    g.addoption("--qemu", action="append", default=[], metavar="VERSION=PATH",
                help="use this QEMU binary for VERSION (repeatable), e.g. --qemu 10.0=./build/qemu-system-x86_64")
    g.addoption("--captures", action="append", default=[], metavar="DIR",
                help="check every stream file and capture directory under DIR as a test item (repeatable; "
                "write --captures=DIR so that pytest does not take DIR for a test path)")
    # the destination profile: the options of `migconform check`, named --captures-* (same defaults)
    from conformance.cli.profile_options import add_pytest_options

    add_pytest_options(g)
    g.addoption("--matrix-json", metavar="PATH",
                help="write the matrix cells that ran as test items (one per cell, tests/test_matrix.py; also on "
                "pytest-xdist workers and --tx ssh= hosts) as one `migconform matrix --json` report")
    g.addoption("--matrix-html", metavar="PATH", help="the same report as self-contained HTML")
    g.addoption("--migconform-profile", choices=PROFILE_NAMES, default=None,
                help="hypothesis profile: quick, ci or fuzz (also: environment variable HYPOTHESIS_PROFILE)")


def pytest_configure(config: pytest.Config) -> None:
    declared = {line.split(":")[0].split("(")[0].strip() for line in config.getini("markers")}
    for name, text in MARKERS.items():
        if name not in declared:  # a project that declares the marker itself keeps its text
            config.addinivalue_line("markers", f"{name}: {text}")
    _load_profile(config)
    _matrix_report(config)
    targets = config.getoption("captures_target") or []
    bad = [t for t in targets if t not in VERSIONS]
    if bad:
        raise pytest.UsageError(f"--captures-target {bad[0]}: not modelled (choose from {', '.join(VERSIONS)})")
    for d in config.getoption("captures") or []:
        if not Path(d).exists():
            raise pytest.UsageError(f"--captures {d}: no such file or directory")


# ---------------------------------------------------------------- matrix cells as test items

MATRIX_CELL_PROPERTY = "migconform_matrix_cell"  # a test item's user property: CellResult.as_json(), as JSON


class MatrixCells:
    """On the controller (the one process without xdist's workerinput): the cells test items
    report through their user properties, which pytest-xdist ships from every worker, local
    or remote; written as one matrix report at the end (JUnit XML is pytest's own --junitxml)."""

    def __init__(self, json_path: str | None, html_path: str | None) -> None:
        self.json_path, self.html_path = json_path, html_path
        self.cells: dict[str, dict] = {}
        self.t0 = time.monotonic()

    def pytest_runtest_logreport(self, report) -> None:
        for name, value in getattr(report, "user_properties", ()):
            if name == MATRIX_CELL_PROPERTY:
                self.cells[report.nodeid] = json.loads(value)

    def pytest_sessionfinish(self, session) -> None:
        from conformance.tools.matrix.report import render_html
        from conformance.tools.matrix.run import merge_cells

        if not self.cells:  # no cell ran (deselected, or the session failed first): no report
            session.config.get_terminal_writer().line("migconform: no matrix cell ran; no matrix report written")
            return
        data = merge_cells(list(self.cells.values()), seconds=time.monotonic() - self.t0,
                           settings={"runner": "pytest", "workers": sorted({c.get("worker") or "main"
                                                                           for c in self.cells.values()})})
        if self.json_path:
            Path(self.json_path).write_text(json.dumps(data, indent=2) + "\n")
        if self.html_path:
            Path(self.html_path).write_text(render_html(data))


def _matrix_report(config: pytest.Config) -> None:
    paths = config.getoption("matrix_json"), config.getoption("matrix_html")
    if any(paths) and not hasattr(config, "workerinput"):
        config.pluginmanager.register(MatrixCells(*paths), "migconform-matrix-cells")


def _load_profile(config: pytest.Config) -> None:
    from hypothesis import settings
    from hypothesis.errors import InvalidArgument

    ours = config.getoption("migconform_profile")
    theirs = config.getoption("hypothesis_profile", None)  # hypothesis' own pytest option, if loaded
    if ours and theirs and ours != theirs:
        raise pytest.UsageError(f"--migconform-profile {ours} and --hypothesis-profile {theirs} disagree")
    name = ours or os.environ.get("HYPOTHESIS_PROFILE") or None
    if not name or theirs:
        return
    try:
        settings.load_profile(name)
    except InvalidArgument:
        if ours:
            raise
        # HYPOTHESIS_PROFILE names a profile nobody registered: leave the choice to whoever does


def pytest_report_header(config: pytest.Config) -> list[str]:
    out = []
    try:
        from hypothesis import settings

        out.append(f"migconform: hypothesis profile {settings.get_current_profile_name()!r}")
    except Exception:  # an older hypothesis without the name query
        pass
    if config.getoption("captures"):
        out.append(f"migconform: checking captures under {', '.join(config.getoption('captures'))}")
    return out


# ---------------------------------------------------------------- QEMU fixtures

def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes", "on")


def _missing(message: str) -> None:
    if _ci():
        pytest.fail(f"{message} (CI is set: every QEMU version must be present)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def qemu_pairs(pytestconfig: pytest.Config) -> dict[str, str]:
    """The --qemu VERSION=PATH pairs."""
    from conformance.qemu import QemuNotFound, parse_pairs

    try:
        return parse_pairs(pytestconfig.getoption("qemu") or [], what="--qemu")
    except QemuNotFound as e:
        raise pytest.UsageError(str(e)) from None


@pytest.fixture(scope="session")
def qemu_binaries(qemu_pairs: dict[str, str]):
    """version -> QemuBinary for every QEMU found (--qemu, MIGCONFORM_QEMU, cache, PATH)."""
    from conformance.qemu import QemuNotFound, discover

    try:
        return discover(qemu_pairs)
    except QemuNotFound as e:  # a binary named explicitly (--qemu, MIGCONFORM_QEMU) is wrong
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def qemu(qemu_binaries, qemu_pairs: dict[str, str]) -> Callable[[str], Any]:
    """qemu("10.0") -> QemuBinary, or skip (fail under CI) with how to install it."""
    from conformance.qemu import QemuNotFound, require

    def get(version: str):
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
def capture(qemu, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Any]:
    """capture("7.2", "pc-i440fx-7.2", "none", mem_mb=64, ...) -> CaptureResult, made once per
    session for the same arguments. The file is shared: copy it before altering it."""
    from conformance.qemu import capture_stream

    made: dict[Any, Any] = {}

    def get(version: str, machine: str = "pc-i440fx-7.2", devices: str = "none", **kw: Any):
        key = (version, machine, devices, _freeze(kw))
        if key not in made:
            binary = qemu(version)
            out = tmp_path_factory.mktemp(f"capture-{version}-{machine}") / "stream.mig"
            made[key] = capture_stream(binary, out, machine=machine, devices=devices, **kw)
        return made[key]

    return get


# ---------------------------------------------------------------- --captures DIR

class CaptureError(Exception):
    """The capture cannot be read or laid out (one line)."""


def check_capture_path(path: Path, target: str | None = None, options=None):
    """The Report of `migconform check PATH --target TARGET`: check's own judge
    (conformance.check.judge, with check's defaults: the built-in destination tables and
    layouts) and its destination profile options (`options`: a namespace as
    cli.profile_options reads it). CaptureError for what cannot be read."""
    from conformance.check.capture_dir import stream_files
    from conformance.check.inputs import InputError
    from conformance.check.judge import judge_path
    from conformance.check.pipeline import StreamReadError
    from conformance.cli.profile_options import from_args
    from conformance.errors import UsageError

    try:
        main, _ = stream_files(str(path))
        if options is None:
            from types import SimpleNamespace

            options = SimpleNamespace(target=target)
        profiles = from_args(options, main)
        return judge_path(str(path), profiles.dest, source=profiles.source)
    except (InputError, StreamReadError, UsageError) as e:
        raise CaptureError(str(e)) from None


class CaptureViolations(Exception):
    def __init__(self, report):
        super().__init__(f"{len(report.violations)} violations")
        self.report = report


class CaptureItem(pytest.Item):
    """One capture judged as one destination version."""

    def __init__(self, *, capture_path: Path, target: str, label: str, **kw):
        super().__init__(**kw)
        self.capture_path = capture_path
        self.target = target
        self.label = label
        self.add_marker("capture")

    def runtest(self) -> None:
        from conformance.cli.profile_options import pytest_namespace

        rep = check_capture_path(self.capture_path, self.target, pytest_namespace(self.config, self.target))
        self.user_properties.append(("verdict", rep.verdict))
        self.user_properties.append(("target", rep.target))
        if rep.violations:
            raise CaptureViolations(rep)

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, CaptureViolations):
            rep = excinfo.value.report
            n = len(rep.violations)
            lines = [f"{self.label}: {n} violation{'' if n == 1 else 's'} as a QEMU {rep.target} destination"]
            lines += ["  " + v.one_line() for v in rep.violations]
            if rep.stats.get("violations_dropped"):
                lines.append(f"  ... {rep.stats['violations_dropped']} more violations not listed")
            return "\n".join(lines)
        if isinstance(excinfo.value, CaptureError):
            return f"{self.label}: {excinfo.value}"
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        return self.capture_path, None, f"capture {self.label} as QEMU {self.target}"


class CaptureCollection(pytest.Collector):
    def __init__(self, *, roots: list[Path], targets: list[str], **kw):
        super().__init__(**kw)
        self.roots, self.targets = roots, targets

    def collect(self) -> list[CaptureItem]:
        items = []
        from conformance.check.capture_dir import find_captures

        for root in self.roots:
            for p in find_captures(root):
                rel = p.relative_to(root).as_posix() if p != root else p.name
                label = rel if len(self.roots) == 1 else f"{root.name}/{rel}"
                for t in self.targets:
                    items.append(CaptureItem.from_parent(self, name=f"{label}[{t}]", path=p, capture_path=p,
                                                         target=t, label=label))
        return items


@pytest.hookimpl(tryfirst=True)  # before -k / -m deselect, so they apply to capture items too
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list) -> None:
    roots = [Path(d).resolve() for d in config.getoption("captures") or []]
    if not roots:
        return
    spec = config.getoption("captures_dest")  # its version is the target unless --captures-target says otherwise
    targets = list(dict.fromkeys(config.getoption("captures_target") or [spec.split(",")[0] if spec else NEWEST]))
    col = CaptureCollection.from_parent(session, name="migconform::captures", nodeid="migconform::captures",
                                        path=roots[0], roots=roots, targets=targets)
    items.extend(session.genitems(col))
