"""The destination's incoming postcopy sub-state, as a transition table.

In the manner of h2's stream-state table: `TRANSITIONS[(state, command)]` is the `Step` a
destination takes when a postcopy command arrives in that state — the next state, or the
code it reports and the state it stays in. The Loader (conformance.rules.loader) interprets
the table; the payload of each command (lengths, block names) it judges itself.

Facts (QEMU migration/savevm.c, loadvm_postcopy_handle_* and loadvm_handle_recv_bitmap):
ADVISE only in NONE; RAM_DISCARD and LISTEN after ADVISE (or DISCARD); RUN only once
LISTENING; each fails the load otherwise with "... in wrong postcopy state (N)", N being
QEMU's PostcopyState number. POSTCOPY_RESUME and RECV_BITMAP belong to a postcopy recovery
(MigrationStatus postcopy-recover): outside one, RESUME is ignored with "illegal resume
received" and RECV_BITMAP is answered all the same. PACKAGED is read in every state.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from wireformat.constants import MigCmd

from conformance.rules.catalogue import Code


class PostcopyState(Enum):
    """QEMU's incoming PostcopyState, plus RECOVER: RUNNING while a recovery channel has not
    yet sent POSTCOPY_RESUME (the destination's MigrationStatus is postcopy-recover)."""

    NONE = 0
    ADVISE = 1
    DISCARD = 2
    LISTENING = 3
    RUNNING = 4
    RECOVER = 5  # not a QEMU PostcopyState: RUNNING, in postcopy-recover

    @property
    def qemu(self) -> "PostcopyState":
        """The PostcopyState QEMU holds (RECOVER is RUNNING there)."""
        return PostcopyState.RUNNING if self is PostcopyState.RECOVER else self

    @property
    def number(self) -> int:
        """The number QEMU prints in "wrong postcopy state (N)"."""
        return self.qemu.value


@dataclass(frozen=True)
class Refusal:
    """What the destination reports for a command in a state that does not take it."""

    code: Code
    message: str  # "{state}" is replaced with the state's QEMU number


@dataclass(frozen=True)
class Step:
    next: PostcopyState  # the state after the command (the same one when refused)
    refused: Refusal | None = None  # None: the command is taken


S = PostcopyState
C = MigCmd

# command -> {state that takes it: next state}
TAKES: dict[MigCmd, dict[PostcopyState, PostcopyState]] = {
    C.MIG_CMD_POSTCOPY_ADVISE: {S.NONE: S.ADVISE},
    C.MIG_CMD_POSTCOPY_RAM_DISCARD: {S.ADVISE: S.DISCARD, S.DISCARD: S.DISCARD},
    C.MIG_CMD_POSTCOPY_LISTEN: {S.ADVISE: S.LISTENING, S.DISCARD: S.LISTENING},
    C.MIG_CMD_POSTCOPY_RUN: {S.LISTENING: S.RUNNING},
    C.MIG_CMD_POSTCOPY_RESUME: {S.RECOVER: S.RUNNING},  # postcopy-recover -> postcopy-active
    C.MIG_CMD_RECV_BITMAP: {S.RECOVER: S.RECOVER},
    C.MIG_CMD_PACKAGED: {s: s for s in S},
}

# command -> what a state that does not take it reports
OTHERWISE: dict[MigCmd, Refusal] = {
    C.MIG_CMD_POSTCOPY_ADVISE: Refusal(Code.POSTCOPY_WRONG_STATE, "CMD_POSTCOPY_ADVISE in wrong postcopy state ({state})"),
    C.MIG_CMD_POSTCOPY_RAM_DISCARD: Refusal(Code.POSTCOPY_WRONG_STATE,
                                            "CMD_POSTCOPY_RAM_DISCARD in wrong postcopy state ({state})"),
    C.MIG_CMD_POSTCOPY_LISTEN: Refusal(Code.POSTCOPY_WRONG_STATE, "CMD_POSTCOPY_LISTEN in wrong postcopy state ({state})"),
    C.MIG_CMD_POSTCOPY_RUN: Refusal(Code.POSTCOPY_WRONG_STATE, "CMD_POSTCOPY_RUN in wrong postcopy state ({state})"),
    C.MIG_CMD_POSTCOPY_RESUME: Refusal(Code.RECOVERY_COMMAND_OUTSIDE_RECOVERY,
                                       "loadvm_postcopy_handle_resume: illegal resume received (not fatal)"),
    C.MIG_CMD_RECV_BITMAP: Refusal(Code.RECOVERY_COMMAND_OUTSIDE_RECOVERY,
                                   "RECV_BITMAP outside postcopy recovery (the destination answers it all the same)"),
}

# Commands whose payload the destination judges before its state (the others: after).
PAYLOAD_FIRST = frozenset({C.MIG_CMD_POSTCOPY_ADVISE, C.MIG_CMD_RECV_BITMAP})

COMMANDS = frozenset(TAKES)

TRANSITIONS: dict[tuple[PostcopyState, MigCmd], Step] = {
    (state, cmd): Step(takes[state]) if state in takes else Step(state, OTHERWISE[cmd])
    for cmd, takes in TAKES.items()
    for state in S
}


def step(state: PostcopyState, cmd: MigCmd) -> Step | None:
    """The step `cmd` makes from `state`; None for a command that is not a postcopy one."""
    return TRANSITIONS.get((state, cmd))


def refusal_message(refusal: Refusal, state: PostcopyState) -> str:
    return refusal.message.format(state=state.number)
