"""The postcopy sub-state table (conformance/rules/postcopy.py) and the destination status the
Loader moves along the MigrationStatus table (conformance/rules/migration_states.py).

Every (state, command) pair of the table is fed to a Loader that was brought into the state
by the commands a source sends: a pair the table takes moves the Loader to its next state
without a finding, any other reports the table's code and leaves the state as it was. Which
pairs are taken is written out below from QEMU's migration/savevm.c, not read from the table.
"""

from __future__ import annotations

import io

import pytest

from conformance.check.pipeline import check_stream
from conformance.rules import migration_states as ms
from conformance.rules import postcopy as pc
from conformance.rules.catalogue import Code
from conformance.rules.loader import Loader
from conformance.rules.postcopy import PostcopyState as S
from tests.test_loader import ADVISE, EOS, HEADER, MEM, ZERO_NAMED, cfg, check, cmd, footer, package, ram_stream, start
from wireformat.commands import RELEASED
from wireformat.constants import MigCmd as C
from wireformat.reader import StreamReader
from wireformat.records import Command

# savevm.c: loadvm_postcopy_handle_advise (NONE), _ram_discard and _listen (ADVISE or DISCARD),
# _run (LISTENING), _resume (mis->state postcopy-recover); packaged data is read in any state;
# RECV_BITMAP is answered in any state, yet only a recovering source sends it.
TAKEN = {
    (S.NONE, C.MIG_CMD_POSTCOPY_ADVISE): S.ADVISE,
    (S.ADVISE, C.MIG_CMD_POSTCOPY_RAM_DISCARD): S.DISCARD,
    (S.DISCARD, C.MIG_CMD_POSTCOPY_RAM_DISCARD): S.DISCARD,
    (S.ADVISE, C.MIG_CMD_POSTCOPY_LISTEN): S.LISTENING,
    (S.DISCARD, C.MIG_CMD_POSTCOPY_LISTEN): S.LISTENING,
    (S.LISTENING, C.MIG_CMD_POSTCOPY_RUN): S.RUNNING,
    (S.RECOVER, C.MIG_CMD_POSTCOPY_RESUME): S.RUNNING,
    (S.RECOVER, C.MIG_CMD_RECV_BITMAP): S.RECOVER,
    **{(s, C.MIG_CMD_PACKAGED): s for s in S},
}

# a payload each command is well-formed with
PAYLOAD = {
    C.MIG_CMD_POSTCOPY_ADVISE: (0x1000).to_bytes(8, "big") * 2,
    C.MIG_CMD_POSTCOPY_RAM_DISCARD: b"\x00\x06pc.ram\x00" + bytes(16),
    C.MIG_CMD_POSTCOPY_LISTEN: b"",
    C.MIG_CMD_POSTCOPY_RUN: b"",
    C.MIG_CMD_POSTCOPY_RESUME: b"",
    C.MIG_CMD_RECV_BITMAP: b"\x06pc.ram",
    C.MIG_CMD_PACKAGED: (0).to_bytes(4, "big"),
}

# the commands a source sends to bring a fresh destination into each state
ROUTE = {
    S.NONE: [],
    S.ADVISE: [C.MIG_CMD_POSTCOPY_ADVISE],
    S.DISCARD: [C.MIG_CMD_POSTCOPY_ADVISE, C.MIG_CMD_POSTCOPY_RAM_DISCARD],
    S.LISTENING: [C.MIG_CMD_POSTCOPY_ADVISE, C.MIG_CMD_POSTCOPY_LISTEN],
    S.RUNNING: [C.MIG_CMD_POSTCOPY_ADVISE, C.MIG_CMD_POSTCOPY_LISTEN, C.MIG_CMD_POSTCOPY_RUN],
}


def command(c: C, offset: int = 100) -> Command:
    data = PAYLOAD[c]
    return Command(offset=offset, channel="main", cmd=int(c), data=data, args=RELEASED.decode(int(c), data))


def loader_in(state: S) -> Loader:
    if state is S.RECOVER:
        loader = Loader("10.0", recovery=True)
    else:
        loader = Loader("10.0")
        for rec in StreamReader(io.BytesIO(HEADER + cfg() + cmd(1))):  # header, configuration, OPEN_RETURN_PATH
            loader.feed(rec)
        for c in ROUTE[state]:
            assert loader.feed(command(c)) == []
    assert loader.postcopy is state
    return loader


def test_the_table_covers_every_state_of_every_postcopy_command():
    assert set(pc.TRANSITIONS) == {(s, c) for s in S for c in PAYLOAD}
    assert {k: step.next for k, step in pc.TRANSITIONS.items() if step.refused is None} == TAKEN


@pytest.mark.parametrize("state,cmd_", sorted(pc.TRANSITIONS, key=lambda k: (k[0].value, k[1])),
                         ids=lambda x: x.name)
def test_the_loader_interprets_the_table(state, cmd_):
    loader = loader_in(state)
    found = loader.feed(command(cmd_))
    if (state, cmd_) in TAKEN:
        assert found == []
        assert loader.postcopy is TAKEN[(state, cmd_)]
    else:
        refusal = pc.TRANSITIONS[(state, cmd_)].refused
        assert [(v.code, v.offset) for v in found] == [(refusal.code, 100)]
        assert loader.postcopy is state


def test_refusals_name_qemus_state_numbers_and_codes():
    # RECOVER is RUNNING (4) to QEMU: its errors say so
    assert [v.message for v in loader_in(S.RECOVER).feed(command(C.MIG_CMD_POSTCOPY_RUN))] == [
        "CMD_POSTCOPY_RUN in wrong postcopy state (4)"]
    assert [v.message for v in loader_in(S.LISTENING).feed(command(C.MIG_CMD_POSTCOPY_ADVISE))] == [
        "CMD_POSTCOPY_ADVISE in wrong postcopy state (3)"]
    assert [(v.code, v.severity.value) for v in loader_in(S.NONE).feed(command(C.MIG_CMD_POSTCOPY_LISTEN))] == [
        (Code.POSTCOPY_WRONG_STATE, "reject")]
    assert [(v.code, v.severity.value) for v in loader_in(S.RUNNING).feed(command(C.MIG_CMD_POSTCOPY_RESUME))] == [
        (Code.RECOVERY_COMMAND_OUTSIDE_RECOVERY, "deviation")]
    assert [(v.code, v.severity.value) for v in loader_in(S.NONE).feed(command(C.MIG_CMD_RECV_BITMAP))] == [
        (Code.RECOVERY_COMMAND_OUTSIDE_RECOVERY, "deviation")]


def test_payload_rules_come_before_or_after_the_state_as_qemu_reads_them():
    bad_advise = Command(offset=7, channel="main", cmd=3, data=b"\x00" * 5, args=None)
    # a wrong ADVISE length is reported even in a state that refuses ADVISE
    assert [v.code for v in loader_in(S.RUNNING).feed(bad_advise)] == [Code.POSTCOPY_ADVISE_LENGTH]
    bad_discard = Command(offset=7, channel="main", cmd=6, data=b"\x01", args=None)
    assert [v.code for v in loader_in(S.NONE).feed(bad_discard)] == [Code.POSTCOPY_WRONG_STATE]
    loader = loader_in(S.ADVISE)
    assert [v.code for v in loader.feed(bad_discard)] == [Code.COMMAND_MALFORMED] and loader.postcopy is S.ADVISE


def test_listen_moves_the_destination_status_as_qemu_does():
    loader = loader_in(S.ADVISE)
    assert loader.status.state == "active"
    loader.feed(command(C.MIG_CMD_POSTCOPY_LISTEN))
    assert loader.status.state == "postcopy-active"  # loadvm_postcopy_handle_listen, not RUN
    loader = loader_in(S.RECOVER)
    assert loader.status.state == "postcopy-recover"
    loader.feed(command(C.MIG_CMD_POSTCOPY_RESUME))
    assert loader.status.state == "postcopy-active"


def test_final_statuses_are_edges_of_the_destination_table():
    postcopy = HEADER + cfg() + cmd(1) + ADVISE + package(cmd(4) + cmd(5)) + start(2, b"ram", 4) + MEM + EOS + footer(2)
    recovery_cut = cmd(9) + start(2, b"ram", 4)  # RESUME, then cut inside a section
    cases = {
        "precopy": (ram_stream(ZERO_NAMED), False, "completed"),
        "precopy cut": (ram_stream(ZERO_NAMED)[:-1], False, "failed"),
        "postcopy cut": (postcopy, False, "postcopy-paused"),
        "postcopy": (postcopy + b"\x00", False, "completed"),
        "recovery cut": (recovery_cut, True, "postcopy-paused"),
        # a recovery channel that ends before RESUME: the destination stays in postcopy-recover
        # (postcopy-recover -> completed is no edge); a rejection there pauses it again
        "recovery without resume": (b"\x00", True, "postcopy-recover"),
        "recovery, a bad command": (cmd(0) + b"\x00", True, "postcopy-paused"),
    }
    for name, (data, recovery, want) in cases.items():
        rep = check_stream(io.BytesIO(data), target="10.0", recovery=recovery)
        assert rep.stats["status"] == want, name
        begin = "postcopy-recover" if recovery else "active"
        assert want == begin or want in ms.reachable(ms.DESTINATION, "10.0", begin), name


def test_status_moves_only_along_edges():
    st = ms.Status(ms.DESTINATION, "7.2", "active")
    assert not st.to("postcopy-recover") and st.state == "active"
    assert st.to("postcopy-active") and st.to("postcopy-paused") and st.state == "postcopy-paused"
    assert st.outcome("failed", "postcopy-recover") == "postcopy-recover"
    with pytest.raises(ValueError):
        ms.Status(ms.DESTINATION, "10.0", "listening")


def test_a_real_postcopy_stream_goes_through_the_table_states():
    data = HEADER + cfg() + cmd(1) + ADVISE + cmd(6, PAYLOAD[C.MIG_CMD_POSTCOPY_RAM_DISCARD]) \
        + package(cmd(4) + cmd(5)) + b"\x00"
    loader, seen = Loader("10.0"), []
    for rec in StreamReader(io.BytesIO(data)):
        loader.feed(rec)
        if not seen or seen[-1] is not loader.postcopy:
            seen.append(loader.postcopy)
    assert seen == [S.NONE, S.ADVISE, S.DISCARD, S.LISTENING, S.RUNNING]
    assert check(data).stats["status"] == "completed"
