"""Switchover-ack: the model (conformance.rules.switchover), its properties, and real QEMU 10.0.

The real checks run a 10.0 source and a 10.0 destination over TCP through a recording
loopback proxy (conformance.qemu.tcp_capture) and compare with what the model predicts.
"""

from __future__ import annotations

import io
import re
import time

import pytest
from hypothesis import find, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from conformance.rules.switchover import (
    MSG_NOTHING_PENDING,
    MSG_NOT_USED,
    Destination,
    Device,
    Event,
    Kind,
    ProtocolError,
    Setup,
    Source,
    SwitchoverChecker,
    ack_reachable,
    channel_labels,
    describe,
    events_from_records,
    events_from_return_path,
    predict,
    real_capabilities,
    run,
)
from conformance.rules.catalogue import CATALOGUE
from strategies.switchover import schedules, setups

FIND = settings(max_examples=2000, database=None, derandomize=True)


def vfio(name="vfio0", src=True, dst=True) -> Device:
    return Device(name, src_precopy=src, dst_ack_needed=dst)


# --------------------------------------------------------------------------- examples
def test_codes_are_catalogued():
    for code in ("switchover-before-ack", "switchover-ack-unreachable", "init-data-sent-unexpected"):
        assert code in CATALOGUE


def test_no_device_acks_at_open_return_path():
    o = predict(Setup())
    assert o.status == "completed" and o.ack_immediate
    assert o.return_path == ["SWITCHOVER_ACK", "PONG 1", "SHUT 0"]
    assert not o.violations


def test_ack_after_the_last_pending_device():
    o = run(Setup(devices=(vfio("a"), vfio("b"))), ["b", "a"])
    labels = [e.label() for e in o.events]
    assert labels.index("SWITCHOVER_ACK") > labels.index("DEV_INIT_DATA_SENT(a)")
    assert labels.index("SWITCHOVER") > labels.index("SWITCHOVER_ACK")
    assert o.status == "completed" and not o.ack_immediate and not o.violations


def test_destination_counts_only_its_own_needs():
    # a device without precopy on either side takes no part
    o = predict(Setup(devices=(vfio(src=False, dst=False), vfio("vfio1"))))
    assert o.status == "completed" and o.ack_sent and not o.violations


def test_asymmetric_device_deadlocks():
    o = predict(Setup(devices=(vfio(src=False, dst=True),)))
    assert o.status == "active" and not o.ack_sent
    assert o.codes == ["switchover-ack-unreachable"]
    assert o.violations[0].section == "vfio0"


def test_destination_capability_off_deadlocks_a_running_source():
    o = predict(Setup(dst_switchover_ack=False))
    assert o.status == "active" and not o.ack_sent and o.return_path == ["PONG 1"]
    assert o.codes == ["switchover-ack-unreachable"]


def test_stopped_source_does_not_wait():
    o = predict(Setup(dst_switchover_ack=False, vm_running=False))
    assert o.status == "completed" and not o.ack_sent and not o.violations


def test_marker_for_a_device_the_destination_does_not_count():
    o = predict(Setup(devices=(vfio(src=True, dst=False),)))
    assert o.status == "failed" and o.destination_error == MSG_NOT_USED
    assert o.codes == ["init-data-sent-unexpected"]
    o = predict(Setup(devices=(vfio(),), dst_switchover_ack=False))
    assert o.status == "failed" and o.codes == ["init-data-sent-unexpected"]


def test_marker_with_nothing_pending():
    setup = Setup(devices=(vfio("a"), vfio("b")))
    checker = SwitchoverChecker(setup)
    for ev in (Event(Kind.OPEN_RETURN_PATH), Event(Kind.INIT_DATA_SENT, device="a", offset=10),
               Event(Kind.INIT_DATA_SENT, device="a", offset=20)):
        assert not checker.feed(ev)  # QEMU counts: a's duplicate takes b's place
    assert checker.dst.ack_sent  # premature: b's initial data never came
    v = checker.feed(Event(Kind.INIT_DATA_SENT, device="b", offset=30))
    assert [(x.code, x.offset, x.message) for x in v] == [("init-data-sent-unexpected", 30, MSG_NOTHING_PENDING)]


def test_source_that_does_not_wait_is_caught():
    o = run(Setup(devices=(vfio("a"), vfio("b"))), waits_for_ack=False, switch_after=1)
    assert o.codes == ["switchover-before-ack"]
    with pytest.raises(ProtocolError):
        Source(Setup(devices=(vfio(),))).switch_over()


def test_advise_fixes_the_asymmetric_device():
    o = predict(Setup(devices=(vfio(src=False, dst=True),), advise=True))
    assert o.status == "completed" and o.ack_immediate and not o.violations
    o = predict(Setup(devices=(vfio(src=True, dst=False),), advise=True))
    assert o.status == "completed" and o.ack_sent and not o.violations


def test_switchover_ack_requires_return_path():
    with pytest.raises(ValueError, match="requires capability 'return-path'"):
        Setup(return_path=False)


def test_events_from_a_vfio_stream():
    """A decoded main stream with a VFIO device: its PART section's DEV_INIT_DATA_SENT
    marker is the device's event; SWITCHOVER is the first END section without
    SWITCHOVER_START. The checker then judges the stream as a destination that needs no
    ack for that device would."""
    from wireformat.constants import MigCmd
    from wireformat.constants import SectionType as T
    from wireformat.records import Command, DeviceState, Eof, SectionFooter, SectionHeader
    from wireformat.vfio import DEV_DATA_STATE, DEV_INIT_DATA_SENT, DEV_SETUP_STATE, END_OF_STATE

    be64 = lambda v: v.to_bytes(8, "big")
    idstr = "0000:00:02.0/vfio"
    recs = [
        Command(offset=20, cmd=MigCmd.MIG_CMD_OPEN_RETURN_PATH, data=b"", args={}),
        Command(offset=25, cmd=MigCmd.MIG_CMD_PING, data=b"\0\0\0\1", args={"value": 1}),
        SectionHeader(offset=34, section_type=T.QEMU_VM_SECTION_START, section_id=5, idstr=idstr, instance_id=0, version_id=1),
        DeviceState(offset=60, section_id=5, idstr=idstr, data=be64(DEV_SETUP_STATE) + be64(END_OF_STATE)),
        SectionFooter(offset=76, section_id=5),
        SectionHeader(offset=81, section_type=T.QEMU_VM_SECTION_PART, section_id=5),
        DeviceState(offset=86, section_id=5, idstr=idstr, data=be64(DEV_DATA_STATE) + be64(2) + b"hi" + be64(DEV_INIT_DATA_SENT)),
        SectionFooter(offset=112, section_id=5),
        SectionHeader(offset=117, section_type=T.QEMU_VM_SECTION_END, section_id=5),
        DeviceState(offset=122, section_id=5, idstr=idstr, data=be64(END_OF_STATE)),
        SectionFooter(offset=130, section_id=5),
        Eof(offset=135),
    ]
    events = events_from_records(recs)
    assert [(e.label(), e.offset) for e in events] == [
        ("OPEN_RETURN_PATH", 20), ("PING 1", 25), (f"DEV_INIT_DATA_SENT({idstr})", 104), ("SWITCHOVER", 117), ("EOF", 135)]
    checker = SwitchoverChecker(Setup(devices=(Device(idstr, src_precopy=True, dst_ack_needed=False),)))
    found = [v for e in events for v in checker.feed(e)]
    assert [(v.code, v.offset, v.message) for v in found] == [("init-data-sent-unexpected", 104, MSG_NOT_USED)]
    # the same stream to a destination that needs the ack: fine, and the ack precedes SWITCHOVER
    checker = SwitchoverChecker(Setup(devices=(Device(idstr),)), return_path_seen=False)
    assert [v for e in events for v in checker.feed(e)] == [] and checker.dst.ack_sent
    # ... but to a destination with the capability off the running source switched too early
    # (a source that ignores the missing ack: 0 pending, yet no ack)
    checker = SwitchoverChecker(Setup(devices=(Device(idstr, src_precopy=False),), dst_switchover_ack=False),
                                return_path_seen=False)
    found = [v.code for e in events if e.kind is not Kind.INIT_DATA_SENT for v in checker.feed(e)]
    assert found == ["switchover-ack-unreachable", "switchover-before-ack"]


# --------------------------------------------------------------------------- properties
@given(st.data())
def test_never_a_switchover_before_the_ack(data):
    setup = data.draw(setups(advise=None))
    order, lag = data.draw(schedules(setup))
    o = run(setup, order, rp_lag=lag)
    assert "switchover-before-ack" not in o.codes
    labels = [e.kind for e in o.events]
    if Kind.SWITCHOVER in labels and setup.source_waits:
        assert Kind.SWITCHOVER_ACK in labels[: labels.index(Kind.SWITCHOVER)]


@given(st.data())
def test_when_both_ends_agree_on_each_device_the_ack_arrives(data):
    setup = data.draw(setups(agree=True, caps="both"))
    order, lag = data.draw(schedules(setup))
    o = run(setup, order, rp_lag=lag)
    assert o.ack_sent and o.status == "completed" and not o.violations, describe(setup)


@given(st.data())
def test_with_the_advise_every_case_completes(data):
    setup = data.draw(setups(caps="any", advise=True, vm_running=None))
    order, lag = data.draw(schedules(setup))
    o = run(setup, order, rp_lag=lag)
    assert o.status == "completed" and not o.violations, describe(setup)
    assert o.ack_sent == setup.src_switchover_ack


@given(setups(advise=None))
def test_the_closed_form_agrees_with_the_simulation(setup):
    o = predict(setup)
    if not setup.unexpected_senders:
        assert o.ack_sent == ack_reachable(setup)
        expected = "active" if setup.source_waits and not ack_reachable(setup) else "completed"
        assert o.status == expected
        assert ("switchover-ack-unreachable" in o.codes) == (expected == "active")
    else:
        assert o.status == "failed" and o.codes[-1] == "init-data-sent-unexpected"


def test_hypothesis_finds_and_shrinks_the_asymmetric_device():
    """Without the advise the property 'the ack arrives' fails; the minimal case is one
    device the destination must ack whose source side has no precopy support."""
    found = find(setups(caps="both", vm_running=True),
                 lambda s: "switchover-ack-unreachable" in predict(s).codes, settings=FIND)
    assert found == Setup(devices=(Device("vfio0", src_precopy=False, dst_ack_needed=True),))
    # the same search with the advise finds nothing
    from hypothesis.errors import NoSuchExample

    with pytest.raises(NoSuchExample):
        find(setups(caps="any", advise=True, vm_running=True),
             lambda s: predict(s).violations != [], settings=settings(FIND, max_examples=300))


def test_hypothesis_finds_the_capability_mismatch():
    """Over capabilities too, the minimal hang has no device at all: the destination has
    switchover-ack off (what the real test below runs)."""
    found = find(setups(caps="any"), lambda s: predict(s).status == "active", settings=FIND)
    assert found == Setup(src_switchover_ack=True, dst_switchover_ack=False, vm_running=True)


# --------------------------------------------------------------------------- stateful
class SwitchoverMachine(RuleBasedStateMachine):
    """Both ends with separate in-flight queues; any interleaving of drains, deliveries and
    switchover attempts. The conforming source never switches over before the ack."""

    @initialize(setup=setups(caps="any", advise=None, vm_running=None))
    def start(self, setup):
        self.setup = setup
        self.src, self.dst = Source(setup), Destination(setup)
        self.checker = SwitchoverChecker(setup)
        self.main, self.rp = list(self.src.open()), []
        self.step = 0

    def _log(self, ev: Event) -> None:
        self.step += 1
        self.checker.feed(Event(ev.kind, ev.device, ev.devices, ev.value, offset=self.step))

    @precondition(lambda self: any(d.name not in self.src.drained for d in self.setup.devices) and not self.src.switched)
    @rule(data=st.data())
    def drain(self, data):
        name = data.draw(st.sampled_from([d.name for d in self.setup.devices if d.name not in self.src.drained]))
        self.main += self.src.drain(name)

    @precondition(lambda self: self.main)
    @rule()
    def deliver_main(self):
        ev = self.main.pop(0)
        self._log(ev)
        self.rp += self.dst.receive(ev)

    @precondition(lambda self: self.rp)
    @rule()
    def deliver_rp(self):
        ev = self.rp.pop(0)
        self._log(ev)
        self.src.receive(ev)

    @precondition(lambda self: not self.src.switched)
    @rule()
    def try_switchover(self):
        if self.src.may_switch_over():
            self.main += self.src.switch_over()
        else:
            with pytest.raises(ProtocolError):
                self.src.switch_over()

    @rule()
    def time_passes(self):
        """Nothing in flight and nothing to do is a state too (a hang looks like this)."""

    @invariant()
    def never_before_ack(self):
        if getattr(self, "checker", None) is None:
            return
        assert all(v.code != "switchover-before-ack" for v in self.checker.violations)
        assert self.dst.count >= 0

    @invariant()
    def quiescent_outcome(self):
        if getattr(self, "checker", None) is None:
            return
        s = self.setup
        done = (not self.main and not self.rp and len(self.src.drained) == len(s.devices))
        if done and self.dst.failed is None and s.return_path:
            assert self.dst.ack_sent == (ack_reachable(s) or (not s.advise and s.dst_switchover_ack and self.dst.count == 0))


TestSwitchoverMachine = SwitchoverMachine.TestCase


# --------------------------------------------------------------------------- the recorder
def test_tcp_recorder_keeps_both_directions():
    """A loopback server that answers each line; the recorder sits between it and a client."""
    import socket
    import threading

    from conformance.qemu.tcp_capture import TcpRecorder

    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(5.0)

    def serve():
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(5.0)
            data = b""
            while not data.endswith(b"bye\n"):
                chunk = conn.recv(100)
                if not chunk:
                    break
                data += chunk
            conn.sendall(b"ack:" + data)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    with TcpRecorder(srv.getsockname()[:2], limit=10) as rec:
        with socket.create_connection((rec.host, rec.port), timeout=5.0) as c:
            c.sendall(b"hello\nbye\n")
            c.shutdown(socket.SHUT_WR)
            got = b""
            while chunk := c.recv(100):
                got += chunk
        assert got == b"ack:hello\nbye\n"
        assert rec.wait_closed(5.0)
        conn = rec.connections[0]
        assert bytes(conn.forward) == b"hello\nbye\n" and conn.forward_total == 10
        assert bytes(conn.backward) == b"ack:hello\n" and conn.backward_total == 14 and conn.truncated
        assert conn.error is None and conn.closed_at is not None
    t.join(5.0)
    srv.close()


def test_tcp_recorder_reports_an_unreachable_target():
    import socket

    from conformance.qemu.tcp_capture import TcpRecorder

    spare = socket.create_server(("127.0.0.1", 0))
    port = spare.getsockname()[1]
    spare.close()  # nothing listens there now
    with TcpRecorder(("127.0.0.1", port), connect_timeout=1.0) as rec:
        with socket.create_connection((rec.host, rec.port), timeout=5.0) as c:
            c.settimeout(5.0)
            assert c.recv(10) == b""  # the proxy hangs up
        assert rec.wait_connections(1, 5.0) and rec.wait_closed(5.0)
        assert "cannot connect" in rec.connections[0].error


# --------------------------------------------------------------------------- real QEMU 10.0
def _migrate_through_recorder(qemu, tmp_path, *, src_caps, dst_caps, running: bool, watch: float):
    """10.0 → 10.0 over TCP through the recorder, the destination tracing its switchover-ack
    count. Returns (source statuses with times, destination status, recorded connection,
    elapsed, the destination's pending counts from its trace)."""
    from conformance.qemu import QemuProcess, start_destination, vm_args
    from conformance.qemu.tcp_capture import TcpRecorder

    binary = qemu("10.0")
    machine = "pc-i440fx-10.0"
    log = tmp_path / "dst-trace.log"
    trace = ["-trace", "loadvm_state_switchover_ack_needed", "-trace", "loadvm_approve_switchover", "-D", str(log)]
    with start_destination(binary, machine=machine, capabilities=dst_caps, extra_args=trace) as dst, \
            QemuProcess(binary, vm_args(machine=machine), cmd_timeout=10.0, name="src-10.0") as src:
        src.set_capabilities(src_caps)
        dst.cmd("migrate-incoming", uri="tcp:127.0.0.1:0")
        port = int(dst.query_migrate()["socket-address"][0]["port"])
        with TcpRecorder(("127.0.0.1", port)) as rec:
            if running:
                src.cmd("cont")
            t0 = time.monotonic()
            src.cmd("migrate", uri=rec.uri)
            seen: list[tuple[float, str]] = []
            while time.monotonic() - t0 < watch:
                status = src.query_migrate()["status"]
                if not seen or seen[-1][1] != status:
                    seen.append((round(time.monotonic() - t0, 3), status))
                if status in ("completed", "failed", "cancelled"):
                    break
                time.sleep(0.05)
            elapsed = time.monotonic() - t0
            dst_status = dst.query_migrate()["status"] if dst.alive() else None
            if seen[-1][1] not in ("completed", "failed", "cancelled"):
                src.cmd("migrate_cancel")
            rec.wait_closed(5.0)
            assert rec.connections, "the source never connected"
    counts = [int(m) for m in re.findall(r"loadvm_state_switchover_ack_needed Switchover ack pending num=(\d+)",
                                         log.read_text() if log.exists() else "")]
    return seen, dst_status, rec.connections[0], elapsed, counts


def _rp_messages(conn):
    from wireformat.returnpath import iter_messages

    return [(m.name.removeprefix("MIG_RP_MSG_"), (m.args or {}).get("value")) for m in iter_messages(io.BytesIO(bytes(conn.backward)))]


def _main_labels(conn):
    """The switchover-ack events of the recorded main stream (it may end early: a
    cancelled migration's stream is cut, so decoding stops where the bytes do)."""
    from wireformat.reader import DecodeError, iter_records

    recs = []
    try:
        for r in iter_records(io.BytesIO(bytes(conn.forward))):
            recs.append(r)
    except DecodeError:
        pass
    return channel_labels(events_from_records(recs), "main")


@pytest.mark.qemu
@pytest.mark.parametrize("running", [False, True], ids=["stopped", "running"])
def test_real_ack_is_immediate_without_devices(qemu, tmp_path, running):
    setup = Setup(vm_running=running)
    o = predict(setup)
    assert o.ack_immediate and o.status == "completed"
    src_caps, dst_caps = real_capabilities(setup)
    seen, dst_status, conn, elapsed, counts = _migrate_through_recorder(qemu, tmp_path, src_caps=src_caps,
                                                                       dst_caps=dst_caps, running=running, watch=20.0)
    assert counts == [Destination(setup).count] == [0]  # the destination counted nothing to wait for
    assert seen[-1][1] == "completed", seen
    assert dst_status == "completed"
    msgs = _rp_messages(conn)
    assert msgs[0] == ("SWITCHOVER_ACK", None) and msgs[1] == ("PONG", 1), msgs
    assert msgs[-1] == ("SHUT", 0)
    assert [f"{n} {v}" if v is not None else n for n, v in msgs] == o.return_path
    from wireformat.returnpath import iter_messages

    real_rp = events_from_return_path(iter_messages(io.BytesIO(bytes(conn.backward))))
    assert channel_labels(real_rp, "return-path") == channel_labels(o.events, "return-path")
    assert _main_labels(conn) == channel_labels(o.events, "main") == ["OPEN_RETURN_PATH", "PING 1", "SWITCHOVER", "EOF"]
    assert elapsed < 5.0


@pytest.mark.qemu
@pytest.mark.slow
def test_real_destination_without_switchover_ack_leaves_the_source_active(qemu, tmp_path):
    setup = Setup(dst_switchover_ack=False, vm_running=True)
    o = predict(setup)
    assert o.status == "active" and not o.ack_sent and o.codes == ["switchover-ack-unreachable"]
    src_caps, dst_caps = real_capabilities(setup)
    seen, dst_status, conn, elapsed, counts = _migrate_through_recorder(qemu, tmp_path, src_caps=src_caps,
                                                                       dst_caps=dst_caps, running=True, watch=8.0)
    assert counts == []  # with the capability off the destination does not even count
    assert elapsed >= 8.0 and seen[-1][1] == "active", seen
    assert dst_status == "active"
    msgs = _rp_messages(conn)
    assert ("SWITCHOVER_ACK", None) not in msgs
    assert msgs[0] == ("PONG", 1)
    # the source never switched over: what it sent matches the model's stuck prefix
    assert _main_labels(conn) == channel_labels(o.events, "main") == ["OPEN_RETURN_PATH", "PING 1"]


@pytest.mark.qemu
def test_real_stopped_source_does_not_wait_for_a_missing_ack(qemu, tmp_path):
    setup = Setup(dst_switchover_ack=False, vm_running=False)
    o = predict(setup)
    src_caps, dst_caps = real_capabilities(setup)
    seen, dst_status, conn, _, _ = _migrate_through_recorder(qemu, tmp_path, src_caps=src_caps, dst_caps=dst_caps,
                                                             running=False, watch=20.0)
    assert seen[-1][1] == o.status == "completed"
    assert [f"{n} {v}" for n, v in _rp_messages(conn)] == o.return_path == ["PONG 1", "SHUT 0"]
