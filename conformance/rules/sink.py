"""The one place violations go: every model (Loader, MultifdChecker, RamModel,
VfioLoadModel, SwitchoverChecker, the downtime SLA, PostcopyMultifdModel) emits through a
`ViolationSink`.

    sink.emit(code, channel, offset, message, section=None)

looks the severity up in the catalogue for the sink's destination version (a model that
models no particular version passes None: the catalogue's default), keeps at most `cap`
violations and counts the rest in `dropped` (the Loader reports it as
`violations_dropped` in its stats).

The models share one return convention:
  feed(event) -> list[Violation]   the violations that event caused (kept ones; often [])
  close()     -> list[Violation]   the violations the end of input caused; a second close()
                                   returns []
  .violations                      every violation kept so far, in emission order
  feed_all(events)                 (where a model has it) feeds, closes and returns .violations
The downtime SLA is a function over a whole stream (sla_violations): it returns its sink's
violations.
"""

from __future__ import annotations

from conformance.rules.catalogue import CATALOGUE, Code, Severity, Violation

MAX_VIOLATIONS = 1000  # kept per sink; a stream broken everywhere must not cost unbounded memory


class ViolationSink:
    __slots__ = ("version", "cap", "violations", "dropped", "first_reject")

    def __init__(self, version: str | None = None, *, cap: int = MAX_VIOLATIONS):
        self.version = version  # the destination version severities are looked up for
        self.cap = cap
        self.violations: list[Violation] = []
        self.dropped = 0  # emitted beyond the cap: counted, not kept
        self.first_reject: Violation | None = None  # kept or not: where the destination stopped

    def emit(self, code: Code, channel: str, offset: int, message: str, section: str | None = None) -> Violation | None:
        """Record one violation; returns it, or None when it was dropped over the cap."""
        if len(self.violations) >= self.cap:  # a stream broken everywhere: keep this path cheap
            self.dropped += 1
            if self.first_reject is None:
                severity = CATALOGUE[code].severity_on(self.version)
                if severity is Severity.REJECT:
                    self.first_reject = Violation(code, severity, channel, offset, message, section)
            return None
        severity = CATALOGUE[code].severity_on(self.version)
        v = Violation(code, severity, channel, offset, message, section)
        self.violations.append(v)
        if severity is Severity.REJECT and self.first_reject is None:
            self.first_reject = v
        return v

    def since(self, mark: int) -> list[Violation]:
        """The violations kept after `mark` (a previous len(sink.violations))."""
        return self.violations[mark:]

    def __len__(self) -> int:
        return len(self.violations)
