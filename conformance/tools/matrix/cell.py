"""One cell of the matrix: what really happened (Outcome), what the checker says of the
stream (CheckerVerdict), what the compat model predicts, and `run_cell`, which gets all
three and the explanation."""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

from conformance.check.pipeline import Report
from conformance.qemu import (
    MigrationFailed,
    QemuBinary,
    QemuError,
    QemuExited,
    QemuTimeout,
    QmpCommandError,
    error_lines,
    feed,
    start_destination,
)
from conformance.qemu import guests as guest_programs
from conformance.qemu.capture import guest_ram_digest
from conformance.rules import compat
from conformance.rules.profile import PROFILES
from conformance.tools.matrix.explain import explain_cell
from conformance.tools.matrix.grid import NONCONVERGING_SECONDS, CellSpec

if TYPE_CHECKING:
    from conformance.tools.matrix.store import CaptureStore

OK_KINDS = ("completed",)
NO_VERDICT_KINDS = ("error", "no-boot")  # no migration ran to a verdict: the cell's verdict is "error"


@dataclass
class Outcome:
    """What really happened. kind: completed | failed | hung | unsupported-machine (a side
    cannot start with that machine type) | refused (a side refuses the set-up, e.g. a
    capability) | ram-differs (the destination completed, but its guest RAM is not the
    source's: silent loss) | guest-dead (completed, RAM equal, but the resumed guest's
    heartbeat does not move) | converged (a migration kept from converging, the nonconverging
    mode, completed by itself: the guest stopped dirtying or its writes were not tracked) |
    no-boot (the source's running guest did not get to its heartbeat within the cell's timeout,
    e.g. an accelerator that does not run guests here: no migration was tried) |
    error (the harness could not get a verdict)."""

    kind: str
    side: str = "destination"  # where it happened: "source" or "destination"
    message: str = ""
    error_lines: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.kind in OK_KINDS

    @property
    def errors(self) -> list[str]:
        """The error lines without QEMU's warnings."""
        return _errors(self.error_lines)

    @property
    def said(self) -> str:
        """What happened, as the rest of a sentence about the side ("the source ...")."""
        return {"unsupported-machine": f"cannot start: {self.message}",
                "refused": f"refused the set-up: {self.message}", "hung": f"hung: {self.message}",
                "failed": f"failed: {self.message}", "error": f"harness error: {self.message}",
                "no-boot": f"could not start the cell: {self.message}",
                "ram-differs": f"completed, but {self.message}", "guest-dead": f"completed, but {self.message}",
                "converged": self.message,
                # a direct cell says how it completed (in postcopy, after the source was stopped)
                "completed": self.message if self.message.startswith(("did not converge", "completed in"))
                else "completed"}.get(self.kind, self.message)

    def as_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping) -> "Outcome":
        return cls(**{k: d[k] for k in ("kind", "side", "message", "error_lines", "seconds") if k in d})


def _errors(lines: Iterable[str]) -> list[str]:
    return [ln for ln in lines if not ln.startswith("warning:")]


def _first_error(lines: Sequence[str], default: str) -> str:
    errs = _errors(lines)
    return errs[0] if errs else default


_UNSUPPORTED_MACHINE = re.compile(r"unsupported machine type|Unsupported machine type")


def outcome_of_verdict(v) -> Outcome:
    """An Outcome from a conformance.qemu LoadVerdict."""
    if v.completed:
        return Outcome("completed", "destination", "completed", list(v.error_lines), v.duration)
    if v.hung:
        return Outcome("hung", "destination", f"no verdict within the timeout (last status {v.status!r})",
                       list(v.error_lines), v.duration)
    # A LoadVerdict does not say whether the process died while starting or while loading
    # (a load that fails at once exits before the first query-migrate answers, status None);
    # run_cell starts the destination itself to tell. Only the machine type is recognised here.
    if v.status is None and v.exit_code is not None and _UNSUPPORTED_MACHINE.search("\n".join(v.error_lines)):
        return Outcome("unsupported-machine", "destination", _first_error(v.error_lines, "unsupported machine type"),
                       list(v.error_lines), v.duration)
    return Outcome("failed", "destination", _first_error(v.error_lines, f"status {v.status!r}, exit code {v.exit_code}"),
                   list(v.error_lines), v.duration)


def outcome_of_exception(e: BaseException, side: str, seconds: float = 0.0) -> Outcome:
    """An Outcome for an adapter exception raised on `side`."""
    if isinstance(e, QemuExited):
        lines = error_lines(e.stderr)
        if _UNSUPPORTED_MACHINE.search(e.stderr):
            return Outcome("unsupported-machine", side, _first_error(lines, "unsupported machine type"), lines, seconds)
        return Outcome("refused", side, _first_error(lines, str(e)), lines, seconds)
    if isinstance(e, QmpCommandError):
        return Outcome("refused", side, e.desc, [str(e)], seconds)
    if isinstance(e, MigrationFailed):
        return Outcome("failed", side, str(e.info.get("error-desc", e)), [str(e)], seconds)
    if isinstance(e, guest_programs.GuestDidNotStart):  # before QemuTimeout: nothing was migrated
        return Outcome("no-boot", side, str(e), [str(e)], seconds)
    if isinstance(e, QemuTimeout):
        return Outcome("hung", side, str(e), [str(e)], seconds)
    return Outcome("error", side, f"{type(e).__name__}: {e}", [str(e)], seconds)


# ---------------------------------------------------------------- judging a stream

@dataclass
class CheckerVerdict:
    ok: bool | None  # None: not applicable (no stream, or the destination never read it)
    violations: list[dict] = field(default_factory=list)
    note: str = ""

    def as_json(self) -> dict:
        return asdict(self)


def checker_verdict(rep: Report) -> CheckerVerdict:
    """The verdict of a checker Report."""
    return CheckerVerdict(not rep.rejected, [x.as_json() for x in rep.violations],
                          "conforms" if not rep.violations else
                          ("rejects" if rep.rejected else "accepts with violations"))


def check_capture(path: Path, target: str, machine: str, sides=None, guest: str = "paused",
                  source_version: str | None = None, capabilities: Sequence[str] = ()) -> CheckerVerdict:
    """The checker's verdict on the stream as a QEMU `target` destination with `machine`,
    started with the destination's one-sided settings of `sides` (a tools.sides.Sides), the
    source's judged against them (rules/settings.py): `check`'s own judge
    (conformance.check.judge), with its defaults (the built-in destination tables).
    `capabilities`: set on both sides (a direct cell's multifd, postcopy-ram); `path` may be
    a capture directory (main + multifd channel files)."""
    if target not in PROFILES:
        return CheckerVerdict(None, [], f"the checker does not model QEMU {target} destinations")
    from conformance.check.judge import judge_path
    from conformance.rules.profile import configure
    from conformance.rules.settings import Side

    split = lambda gs: dict(g.split("=", 1) for g in gs)  # noqa: E731
    both = {c: True for c in capabilities}
    dest, source = configure(target, machine=machine, capabilities=both or None), None
    if sides:
        dest = configure(target, machine=machine, globals=split(sides.dest_globals),
                         capabilities={**both, **sides.dest_capabilities}, parameters=sides.dest_parameters)
        if source_version in PROFILES:  # (a source version not modelled: its side is not judged)
            source = Side(source_version, dest.machine, split(sides.source_globals), dict(sides.source_capabilities),
                          dict(sides.source_parameters), running=guest != "paused")
    return checker_verdict(judge_path(str(path), dest, source=source))


# ---------------------------------------------------------------- cells

@dataclass
class CellResult:
    spec: CellSpec
    real: Outcome
    model: compat.Prediction
    checker: CheckerVerdict
    src_version: str = ""  # full versions
    dst_version: str = ""
    capture_bytes: int = 0
    capture_seconds: float = 0.0
    explanation: dict = field(default_factory=dict)  # {"summary": str, "details": [str], "section": {...}}

    @property
    def model_agrees(self) -> bool | None:
        """None: the model does not predict this cell (one-sided capabilities or parameters)."""
        if self.model.compatible is None:
            return None
        return self.model.compatible == self.real.ok

    @property
    def checker_agrees(self) -> bool | None:
        return None if self.checker.ok is None else self.checker.ok == self.real.ok

    @property
    def known_fault(self) -> bool:
        """The real outcome is the known fault of the source binary the cell is labelled with
        (CellSpec.known_fault): an expected failure, shown with its label, not a disagreement."""
        label, kinds = self.spec.known_fault_and_kinds
        return label is not None and self.real.kind in kinds

    @property
    def verdict(self) -> str:
        """pass | expected-fail | disagree | error."""
        if self.real.kind in NO_VERDICT_KINDS:
            return "error"
        if self.known_fault:
            return "expected-fail"
        if self.model_agrees is False or self.checker_agrees is False:
            return "disagree"
        return "pass" if self.real.ok else "expected-fail"

    @property
    def disagreeing(self) -> list[str]:
        """Which predictions the real outcome contradicts (none for a cell without a verdict)."""
        if self.real.kind in NO_VERDICT_KINDS or self.known_fault:
            return []
        out = []
        if self.model_agrees is False:
            out.append("model")
        if self.checker_agrees is False:
            out.append("checker")
        return out

    def as_json(self) -> dict:
        s = self.spec
        return {
            "id": s.id, "src": s.src, "dst": s.dst, "machine": s.machine, "devices": s.devices, "caps": s.caps,
            "guest": s.guest, "one_sided": s.sided, "accel": s.accel, "mode": s.mode, "row": s.row,
            "known_fault": s.known_fault, "known_fault_seen": self.known_fault,
            "capabilities": list(s.capabilities),
            "src_version": self.src_version, "dst_version": self.dst_version,
            "verdict": self.verdict, "disagreeing": self.disagreeing,
            "real": self.real.as_json(),
            "model": {"compatible": self.model.compatible, "reasons": list(self.model.reasons),
                      "warnings": list(self.model.warnings), "agrees": self.model_agrees},
            "checker": {**self.checker.as_json(), "agrees": self.checker_agrees},
            "capture": {"bytes": self.capture_bytes, "seconds": round(self.capture_seconds, 3)},
            "explanation": self.explanation,
        }


NOT_MODELLED = "not modelled: a capability or parameter set on one side only"


def predict_cell(spec: CellSpec, globals_: Sequence[str] = ()) -> compat.Prediction:
    """The compat model's prediction; one-sided -globals are given to it per side, one-sided
    capabilities and parameters it does not model (compatible None: no guess)."""
    sides = spec.sides
    if not sides.only_globals:
        return compat.Prediction(None, [NOT_MODELLED])  # type: ignore[arg-type]
    p = compat.predict(spec.src, spec.dst, spec.machine, spec.migration_capabilities,
                       (*globals_, *sides.source_globals), dst_globals=(*globals_, *sides.dest_globals))
    if p.compatible and spec.mode == "nonconverging" and spec.guest != "paused":
        p.warnings.append(f"precopy does not converge (the guest dirties faster than downtime-limit allows at "
                          f"max-bandwidth): the cell stops the source after {NONCONVERGING_SECONDS:g} s, then it "
                          "completes")
    if p.compatible and spec.mode == "postcopy":
        p.warnings.append("both sides allow postcopy-ram: the source switches to postcopy while its guest runs")
    return p


def run_cell(spec: CellSpec, store: CaptureStore, *, timeout: float | None = None, explain: bool = True) -> CellResult:
    """Capture (or reuse the capture), load into the destination, predict, check, explain."""
    binaries = store.binaries
    src_bin, dst_bin = binaries[spec.src], binaries[spec.dst]
    prediction = predict_cell(spec, store.globals_)
    if spec.direct:  # straight into a live destination over TCP (direct.py)
        from conformance.tools.matrix.direct import run_direct
        cap, real, checker = run_direct(spec, store, timeout=timeout)
    elif (cap := store.get(spec.capture_key, spec.sides)).outcome is not None:
        real = cap.outcome
        checker = CheckerVerdict(None, [], f"no stream: the source {real.said}")
    else:
        path = cap.path
        assert path is not None
        # judged against the destination as the cell starts it (its one-sided settings too)
        checker = store.verdicts.get((str(path), spec.dst, spec.machine, spec.sided, spec.guest),
                                     lambda: check_capture(path, spec.dst, spec.machine, spec.sides, spec.guest,
                                                           spec.src))
        store.doing(f"load {spec.id}")
        real = load_cell(spec, store, path, timeout=timeout, source_ram=cap.source_ram)
        if real.kind == "refused":
            checker = CheckerVerdict(None, checker.violations,
                                     "not applicable: the destination refused its set-up before reading the stream "
                                     f"({real.message}); the checker judges streams only")
    res = CellResult(spec, real, prediction, checker, src_version=cap.full_version or src_bin.full_version,
                     dst_version=dst_bin.full_version, capture_bytes=cap.size, capture_seconds=cap.seconds)
    if explain:
        try:
            res.explanation = explain_cell(res, store, cap)
        except Exception as e:  # an explanation must never cost the verdict
            res.explanation = {"summary": f"(no explanation: {type(e).__name__}: {e})", "details": []}
    if res.known_fault:  # the label first: this is the binary's fault, not the stream's
        res.explanation = {**res.explanation, "summary": f"{spec.known_fault} [{res.real.said}]",
                           "details": [res.explanation.get("summary", ""), *res.explanation.get("details", [])]}
    return res


def load_cell(spec: CellSpec, store: CaptureStore, stream: Path, *, timeout: float | None = None,
              source_ram: str | None = None) -> Outcome:
    """Load `stream` into the cell's destination, started with the cell's guest, capabilities,
    its own one-sided settings and the store's memory size and -global settings; then judge
    the guest (after_load)."""
    caps = spec.capabilities
    sides = spec.sides
    g = store.guest(spec.guest)
    dev, extra = store.device_args(spec.devices, caps, g, spec.accel)
    return load_into(store.binaries[spec.dst], stream, machine=spec.machine, devices=dev, mem_mb=g.mem_mb(store.mem_mb),
                     caps=caps, globals_=(*store.globals_, *sides.dest_globals), extra_args=extra,
                     timeout=store.timeout if timeout is None else timeout,
                     capabilities=sides.dest_capabilities, parameters=sides.dest_parameters,
                     guest=g, source_ram=source_ram)


def load_into(binary: QemuBinary, stream: Path, *, machine: str, devices: str, mem_mb: int, caps: Sequence[str],
              globals_: Sequence[str], extra_args: Sequence[str], timeout: float,
              capabilities: Mapping[str, bool] | None = None, parameters: Mapping | None = None,
              guest: guest_programs.Guest | None = None, source_ram: str | None = None) -> Outcome:
    """What `load_stream` does, in its two steps, so that a destination that cannot start
    (machine type, device, capability) is told from one that fails to load. `capabilities`
    and `parameters`: the destination's own, beside `caps`. A completed load is then judged
    by after_load (RAM against `source_ram`, the `guest`'s heartbeat)."""
    t0 = time.monotonic()
    try:
        q = start_destination(binary, machine=machine, devices=devices, mem_mb=mem_mb,
                              capabilities={**{c: True for c in caps}, **(capabilities or {})},
                              parameters=parameters, globals_=globals_, extra_args=extra_args,
                              cmd_timeout=min(timeout, 10.0))
    except QemuError as e:
        return outcome_of_exception(e, "destination", time.monotonic() - t0)
    try:
        with q:
            out = outcome_of_verdict(feed(q, stream, timeout=max(1.0, timeout - (time.monotonic() - t0))))
            if out.ok:
                out = after_load(q, out, mem_mb=mem_mb, source_ram=source_ram, guest=guest, within=timeout)
            out.seconds = time.monotonic() - t0
            return out
    except QemuError as e:
        return outcome_of_exception(e, "destination", time.monotonic() - t0)


def after_load(q, out: Outcome, *, mem_mb: int, source_ram: str | None,
               guest: guest_programs.Guest | None, within: float = 30.0) -> Outcome:
    """A completed destination (still stopped): its guest RAM against the source's (the rule:
    capture.COMPARE_SKIP), then resumed (`cont`) and its heartbeat read until it moves (for
    at most `within` seconds, the cell's timeout)."""
    if source_ram is not None and guest_ram_digest(q, mem_mb) != source_ram:
        return Outcome("ram-differs", "destination", "the destination's guest RAM differs from the source's "
                       "(silent loss)", out.error_lines, out.seconds)
    if guest is not None and guest.checked:
        q.cmd("cont")
        if not guest_programs.heartbeat_advances(q, guest, within=within):
            if guest.heartbeat is None:
                where = "on its serial port"
            else:
                addr, size = guest.heartbeat
                where = f"({size} bytes at {addr:#x})"
            return Outcome("guest-dead", "destination", f"the resumed guest's heartbeat {where} "
                           "does not move", out.error_lines, out.seconds)
    return out
