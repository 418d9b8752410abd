"""Hypothesis strategies for the strict downtime SLA model (conformance.rules.downtime).

Limits and the source's downtime are milliseconds (what SEND_SRC_DOWNTIME carries); section
load costs are microseconds (the virtual clock's tick, as in QEMU's trace points). All
shrink towards small numbers, so a minimal example is readable as it stands.
"""

from __future__ import annotations

from hypothesis import strategies as st

from conformance.rules.downtime import SlaCommand

MAX_LIMIT_MS = 2000  # QEMU's downtime-limit maximum is 2000 s; SLAs are far below
MAX_COST_US = 5_000_000


def sla_commands(*, max_limit_ms: int = MAX_LIMIT_MS, source: str = "any") -> st.SearchStrategy[SlaCommand]:
    """source: "any" (0 .. 2×limit), "within" (0 .. limit: the source has not blown it)."""

    @st.composite
    def build(draw) -> SlaCommand:
        limit = draw(st.integers(1, max_limit_ms))
        top = limit if source == "within" else 2 * limit
        return SlaCommand(abort_limit_ms=limit, source_downtime_ms=draw(st.integers(0, top)))

    return build()


def section_costs(*, min_size: int = 1, max_size: int = 12, min_cost: int = 0,
                  max_cost: int = MAX_COST_US) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(min_cost, max_cost), min_size=min_size, max_size=max_size)


def sla_cases(**kw) -> st.SearchStrategy[tuple[SlaCommand, list[int]]]:
    cost_kw = {k: kw.pop(k) for k in list(kw) if k in ("min_size", "max_size", "min_cost", "max_cost")}
    return st.tuples(sla_commands(**kw), section_costs(**cost_kw))
