"""MigrationStatus of a QEMU source and destination, as explicit transition tables.

Pure data and functions (no processes). The values are QAPI's `MigrationStatus`, as
`query-migrate` reports them and as the `MIGRATION` event announces them when the `events`
capability is on. Each side has its own state; a transition is taken with a compare-and-swap
from an expected old state, so only the edges below can ever be seen.

Sources: QEMU's migrate_set_state calls (migration/migration.c, savevm.c, postcopy-ram.c) and
qapi/migration.json, and what the real 7.2.22 and 10.0.2 binaries did in
tests/test_postcopy_states.py (noted "observed"):

* the 7.2 destination emits a MIGRATION event `setup` when `migrate-incoming` (and
  `migrate-recover`) starts listening, without changing its state: query-migrate shows no
  status before the connection, `active` while loading, and stays `postcopy-paused` after
  `migrate-recover`. Such announcements are `EVENT_ONLY`: allowed in an event sequence,
  no change of state;
* the 10.0 destination is already `setup` once `migrate-incoming` listens;
* `migrate_cancel` after postcopy started: 7.2 takes it (postcopy-active -> cancelling ->
  cancelled; from postcopy-paused it stays `cancelling` for good: neither `migrate
  resume=true` nor a new `migrate` is accepted afterwards); 10.0 refuses it ("Postcopy
  migration in progress, cannot cancel."), so 10.0 has no postcopy -> cancelling edge;
* a recovery on 9.1+ passes through `postcopy-recover-setup` on the source; 7.2 goes from
  `postcopy-paused` straight to `postcopy-recover`.

    check_sequence("source", "10.0", ["setup", "active", "device", "completed"])  # -> []
    predict_sequence("destination", "7.2", "postcopy-recovery")
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

from conformance.versions import FACTS, VERSIONS, Modelled, release

SOURCE, DESTINATION = "source", "destination"
SIDES = (SOURCE, DESTINATION)

STATUSES = (
    "none", "setup", "cancelling", "cancelled", "active", "postcopy-device", "postcopy-active",
    "postcopy-paused", "postcopy-recover-setup", "postcopy-recover", "completed", "failed", "colo",
    "pre-switchover", "device", "wait-unplug",
)

Edge = tuple[str, str]

# ------------------------------------------------------------------ source

_SOURCE_COMMON: dict[Edge, str] = {
    ("none", "setup"): "migrate (a finished migration is reset to none first)",
    ("setup", "active"): "setup done",
    ("setup", "failed"): "connection or setup error",
    ("setup", "wait-unplug"): "failover devices still plugged",
    ("active", "wait-unplug"): "failover devices still plugged",
    ("wait-unplug", "active"): "unplug finished",
    ("wait-unplug", "failed"): "error while waiting for the unplug",
    ("active", "pre-switchover"): "switchover with pause-before-switchover",
    ("pre-switchover", "device"): "migrate-continue",
    ("pre-switchover", "failed"): "error while paused before switchover",
    ("active", "failed"): "error during precopy (channel cut, destination gone)",
    ("device", "failed"): "error while serialising devices",
    ("device", "completed"): "precopy completion after device serialisation",
    ("colo", "completed"): "COLO failover",
    ("postcopy-active", "completed"): "postcopy finished",
    ("postcopy-active", "postcopy-paused"): "channel error during postcopy (never failed)",
    ("postcopy-recover", "postcopy-paused"): "channel error during the recovery handshake",
    ("postcopy-recover", "postcopy-active"): "RESUME_ACK received",
    ("setup", "cancelling"): "migrate_cancel",
    ("active", "cancelling"): "migrate_cancel",
    ("pre-switchover", "cancelling"): "migrate_cancel",
    ("device", "cancelling"): "migrate_cancel",
    ("wait-unplug", "cancelling"): "migrate_cancel",
    ("cancelling", "cancelled"): "teardown finished",
}

# Edges of one version: (fact of conformance/versions.py, its value) -> the edges a version
# with that value has. Versions differ in these facts only.
_SOURCE_BY_FACT: dict[tuple[str, bool], dict[Edge, str]] = {
    ("switchover_device_state", False): {
        ("active", "completed"): "precopy completion (7.2: no device state without pause-before-switchover)",
        ("active", "postcopy-active"): "migrate-start-postcopy: set at the start of the switch, before the package",
        ("postcopy-active", "failed"): "error before the postcopy package went out",
        ("active", "colo"): "x-colo: first checkpoint",
    },
    ("switchover_device_state", True): {
        ("active", "device"): "switchover (10.0: on every migration, precopy and postcopy)",
        ("device", "postcopy-active"): "postcopy package sent",
        ("device", "colo"): "x-colo: first checkpoint",
    },
    ("recover_setup_state", False): {
        ("postcopy-paused", "postcopy-recover"): "migrate resume=true",
    },
    ("recover_setup_state", True): {
        ("postcopy-paused", "postcopy-recover-setup"): "migrate resume=true (9.1+)",
        ("postcopy-recover-setup", "postcopy-recover"): "new channel connected",
        ("postcopy-recover-setup", "postcopy-paused"): "the new channel failed again",
    },
    ("cancel_in_postcopy", True): {
        ("postcopy-active", "cancelling"): "migrate_cancel (accepted in postcopy by 7.2; the destination pauses)",
        ("postcopy-paused", "cancelling"): "migrate_cancel (observed: stays cancelling for good)",
        ("postcopy-recover", "cancelling"): "migrate_cancel",
    },
    # ("cancel_in_postcopy", False): no postcopy-* -> cancelling, 10.0 refuses migrate_cancel then
}

# ------------------------------------------------------------------ destination

_DESTINATION_COMMON: dict[Edge, str] = {
    ("active", "completed"): "EOF reached and the load succeeded",
    ("active", "failed"): "load error (a cancelled or cut source looks the same)",
    ("active", "postcopy-active"): "POSTCOPY_LISTEN",
    ("postcopy-active", "completed"): "the listen thread saw EOF",
    ("postcopy-active", "failed"): "unrecoverable postcopy error",
    ("postcopy-active", "postcopy-paused"): "channel error while running (a cancelled 7.2 source too)",
    ("postcopy-recover", "postcopy-paused"): "channel error during the recovery handshake",
    ("postcopy-paused", "postcopy-recover"): "new main channel (after migrate-recover)",
    ("postcopy-recover", "postcopy-active"): "POSTCOPY_RESUME",
    ("active", "colo"): "COLO enabled, first checkpoint loaded",
    ("colo", "completed"): "failover",
}

_DESTINATION_BY_FACT: dict[tuple[str, bool], dict[Edge, str]] = {
    ("incoming_setup_state", False): {
        ("none", "active"): "incoming connection: loading starts (7.2 never holds setup; see EVENT_ONLY)",
    },
    ("incoming_setup_state", True): {
        ("none", "setup"): "migrate-incoming (observed: before any connection arrives)",
        ("setup", "active"): "incoming connection: loading starts",
        ("setup", "failed"): "incoming channel setup error",
    },
}


def _edges(common: dict[Edge, str], by_fact: dict[tuple[str, bool], dict[Edge, str]], m: Modelled) -> dict[Edge, str]:
    out = dict(common)
    for (fact, value), edges in by_fact.items():
        if getattr(m, fact) == value:
            out.update(edges)
    return out


TABLES: dict[tuple[str, str], dict[Edge, str]] = {}
for _v, _m in FACTS.items():
    TABLES[(SOURCE, _v)] = _edges(_SOURCE_COMMON, _SOURCE_BY_FACT, _m)
    TABLES[(DESTINATION, _v)] = _edges(_DESTINATION_COMMON, _DESTINATION_BY_FACT, _m)

# MIGRATION events that announce a status without the state changing: (state, announced).
EVENT_ONLY: dict[tuple[str, str], dict[Edge, str]] = {
    (DESTINATION, v): {
        ("none", "setup"): "migrate-incoming: 7.2 sends the setup event itself, state stays none",
        ("postcopy-paused", "setup"): "migrate-recover: 7.2 sends the setup event, state stays postcopy-paused",
    }
    for v, m in FACTS.items() if not m.incoming_setup_state
}

# States a side may stay in with nothing more happening (where a run may end).
RESTING: dict[tuple[str, str], dict[str, str]] = {}
for _v in VERSIONS:
    RESTING[(SOURCE, _v)] = {
        "none": "no migration yet",
        "completed": "finished",
        "failed": "failed",
        "cancelled": "cancelled",
        "postcopy-paused": "waiting for a recovery, indefinitely",
    }
    RESTING[(DESTINATION, _v)] = {
        "none": "no migration yet",
        "completed": "finished",
        "failed": "failed (the process exits)",
        "postcopy-paused": "waiting for a recovery, indefinitely",
    }
    if FACTS[_v].incoming_setup_state:
        RESTING[(DESTINATION, _v)]["setup"] = "listening, no source connected"
    if FACTS[_v].cancel_in_postcopy:
        RESTING[(SOURCE, _v)]["cancelling"] = "migrate_cancel in postcopy-paused: the cancel never finishes (observed)"


def modelled_release(version: str) -> str:
    """'7.2.22' -> '7.2', '10.0' -> '10.0'; only the modelled versions."""
    key = release(version)
    if key not in VERSIONS:
        raise ValueError(f"QEMU {version}: no MigrationStatus table (modelled: {', '.join(VERSIONS)})")
    return key


def _side(side: str) -> str:
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, not {side!r}")
    return side


def table(side: str, version: str) -> dict[Edge, str]:
    """The (from, to) -> trigger table of one side of one version."""
    return TABLES[(_side(side), modelled_release(version))]


def event_only(side: str, version: str) -> dict[Edge, str]:
    return EVENT_ONLY.get((_side(side), modelled_release(version)), {})


def resting_states(side: str, version: str) -> dict[str, str]:
    return RESTING[(_side(side), modelled_release(version))]


def reachable(side: str, version: str, start: str = "none") -> set[str]:
    """Every state reachable from `start` through the table."""
    edges = table(side, version)
    seen, todo = {start}, [start]
    while todo:
        s = todo.pop()
        for (a, b) in edges:
            if a == s and b not in seen:
                seen.add(b)
                todo.append(b)
    return seen


def check_sequence(side: str, version: str, statuses: Iterable[str], *, start: str = "none") -> list[str]:
    """The illegal steps of an observed status sequence (MIGRATION events, or query-migrate
    polls: a status repeated by polling is no step). Empty when every step is a transition of
    the table, or an announcement the version makes without changing state (EVENT_ONLY).
    After an illegal step the observed status is taken as the state, to go on checking."""
    edges = table(side, version)
    announcements = event_only(side, version)
    problems: list[str] = []
    state, previous = start, start
    for i, status in enumerate(statuses):
        if status not in STATUSES:
            problems.append(f"step {i}: {status!r} is not a MigrationStatus value")
            state = previous = status
            continue
        if status == previous:
            continue  # polled twice
        if (state, status) in edges:
            state = status
        elif (state, status) in announcements:
            pass  # an event, not a change of state
        else:
            problems.append(f"step {i}: {state} -> {status} is not a transition of a QEMU "
                            f"{modelled_release(version)} {side}")
            state = status
        previous = status
    return problems


def final_state(side: str, version: str, statuses: Sequence[str], *, start: str = "none") -> str:
    """The state a sequence leaves the side in (announcements do not change it)."""
    announcements = event_only(side, version)
    state = start
    for status in statuses:
        if (state, status) not in announcements:
            state = status
    return state


# ------------------------------------------------------------------ predictions

SCENARIOS: dict[str, tuple[str, ...]] = {
    "precopy": ("migrate", "complete"),
    "postcopy": ("migrate", "start-postcopy", "complete"),
    "postcopy-recovery": ("migrate", "start-postcopy", "cut", "recover", "complete"),
    "cut-precopy": ("migrate", "cut"),
    "cancel-precopy": ("migrate", "cancel"),
    "cancel-postcopy": ("migrate", "start-postcopy", "cancel"),
    "cancel-paused": ("migrate", "start-postcopy", "cut", "cancel"),
    "stop-paused": ("migrate", "start-postcopy", "cut", "stop", "recover", "complete"),
    "cont-paused": ("migrate", "start-postcopy", "cut", "cont", "recover", "complete"),
}
STEPS = ("migrate", "start-postcopy", "cut", "recover", "cancel", "complete", "stop", "cont")

# phases of the pair: idle, precopy, postcopy, paused, done (nothing more can happen),
# wedged (7.2 source cancelling for good, destination paused)
_NEXT: dict[tuple[str, str], str] = {
    ("idle", "migrate"): "precopy",
    ("precopy", "start-postcopy"): "postcopy",
    ("precopy", "cut"): "done",
    ("precopy", "cancel"): "done",
    ("precopy", "complete"): "done",
    ("postcopy", "cut"): "paused",
    ("postcopy", "complete"): "done",
    ("paused", "recover"): "postcopy",
}


def _effect(side: str, m: Modelled, phase: str, step: str, events: bool) -> tuple[list[str], str]:
    """(statuses the step makes `side` of version `m` report, next phase)."""
    src = side == SOURCE
    if step in ("stop", "cont"):
        return [], phase  # the guest's run state: no MigrationStatus change
    if step == "cancel" and phase in ("idle", "done", "wedged"):
        return [], phase  # nothing to cancel: migrate_cancel does nothing
    if step == "cancel" and phase in ("postcopy", "paused"):
        if not m.cancel_in_postcopy:
            return [], phase  # 10.0: "Postcopy migration in progress, cannot cancel."
        if phase == "postcopy":
            return (["cancelling", "cancelled"] if src else ["postcopy-paused"]), "done"
        return (["cancelling"] if src else []), "wedged"
    nxt = _NEXT.get((phase, step))
    if nxt is None:
        raise ValueError(f"step {step!r} is not possible in phase {phase!r}")
    if step == "migrate":
        out = ["setup", "active"] if src or m.incoming_setup_state or events else ["active"]
    elif step == "start-postcopy":
        out = ["device", "postcopy-active"] if src and m.switchover_device_state else ["postcopy-active"]
    elif step == "cut":
        out = ["postcopy-paused"] if phase == "postcopy" else ["failed"]
    elif step == "recover":
        if src:
            out = ["postcopy-recover-setup", "postcopy-recover", "postcopy-active"] if m.recover_setup_state else \
                ["postcopy-recover", "postcopy-active"]
        else:
            out = (["setup"] if events and not m.incoming_setup_state else []) + ["postcopy-recover", "postcopy-active"]
    elif step == "cancel":  # precopy
        out = ["cancelling", "cancelled"] if src else ["failed"]
    else:  # complete
        out = ["device", "completed"] if src and m.switchover_device_state and phase == "precopy" else ["completed"]
    return out, nxt


def predict_sequence(side: str, version: str, scenario: str | Sequence[str], *, events: bool = True) -> list[str]:
    """The statuses `side` goes through in a scenario: a name of SCENARIOS, or a sequence of
    STEPS (as a test drives them). events=True: as MIGRATION events announce them (with the
    7.2 destination's setup announcements); False: as query-migrate shows the states."""
    _side(side)
    v = modelled_release(version)
    steps = SCENARIOS[scenario] if isinstance(scenario, str) else tuple(scenario)
    phase, out = "idle", []
    for step in steps:
        if step not in STEPS:
            raise ValueError(f"unknown step {step!r} (known: {', '.join(STEPS)})")
        got, phase = _effect(side, FACTS[v], phase, step, events)
        out += got
    return out


def describe(side: str, version: str) -> str:
    """The table as text lines, for reports."""
    lines = [f"QEMU {modelled_release(version)} {side}:"]
    for (a, b), why in table(side, version).items():
        lines.append(f"  {a} -> {b}: {why}")
    for (a, b), why in event_only(side, version).items():
        lines.append(f"  ({a}: event {b} only) {why}")
    return "\n".join(lines)


def as_json() -> Mapping[str, object]:
    return {
        f"{side}-{v}": {
            "transitions": [{"from": a, "to": b, "trigger": t} for (a, b), t in TABLES[(side, v)].items()],
            "event_only": [{"state": a, "event": b, "why": t} for (a, b), t in EVENT_ONLY.get((side, v), {}).items()],
            "resting": dict(RESTING[(side, v)]),
        }
        for side in SIDES for v in VERSIONS
    }


# ------------------------------------------------------------------ one side, as a model


class Status:
    """One side's MigrationStatus, moved only along the edges of its version's table (the
    Loader holds the destination's). `to(new)` takes the edge state -> new when the table
    has it and says whether it did; `outcome(*candidates)` is the first candidate the
    table reaches from the current state, without moving (None when none is)."""

    __slots__ = ("side", "version", "edges", "state")

    def __init__(self, side: str, version: str, state: str):
        self.side, self.version = _side(side), modelled_release(version)
        self.edges = TABLES[(self.side, self.version)]
        if state not in STATUSES:
            raise ValueError(f"{state!r} is not a MigrationStatus value")
        self.state = state

    def can(self, new: str) -> bool:
        return (self.state, new) in self.edges

    def to(self, new: str) -> bool:
        if (self.state, new) in self.edges:
            self.state = new
            return True
        return False

    def outcome(self, *candidates: str) -> str | None:
        return next((c for c in candidates if (self.state, c) in self.edges), None)
