"""The VFIO device-state reassembly model (conformance/rules/vfio_model.py) under generated arrival
orders and caps (strategies/vfio.py).

The central property: for every arrival order and cap, either every device's state is
written in idx order and its peak queue is exactly the minimum the order forces (computed
here independently: a buffer is queued from its arrival until every lower index — and
SWITCHOVER_START — has arrived), or the load fails with queue-cap-exceeded at the first
packet whose arrival takes that forced queue above the cap, never above it.
"""

from __future__ import annotations

import math
import random
import time

import pytest
from hypothesis import HealthCheck, Phase, event, find, given, settings, strategies as st

from conformance.rules.vfio_model import StateBuffer, SwitchoverStart, VfioDevice, VfioLoadModel
from strategies.vfio import (
    Cap,
    DeviceState,
    any_arrival_orders,
    arrival_orders,
    caps,
    describe_order,
    device_sets,
    device_states,
)
from wireformat.multifd import MultifdDeviceStatePacket
from wireformat.vfio import VfioDeviceState, build_device_state

DEV = "0000:00:02.0/vfio"


def model_for(states, cap_list) -> VfioLoadModel:
    return VfioLoadModel([s.device(c.max_queued_bytes, c.max_queued_buffers) for s, c in zip(states, cap_list)])


# --- the forced queue, computed independently of the model ------------------------------------------


def forced_queue(order, state: DeviceState) -> list[tuple[int, int, int, int]]:
    """For each arrival of the device's buffers: (position in the order, idx, bytes queued,
    buffers queued) at the moment the destination checks its caps. A buffer j is queued
    from its arrival until it can be written: when 0 … j have all arrived and the load has
    started, i.e. at max(arrival of 0 … j, SWITCHOVER_START)."""
    sw = next((t for t, e in enumerate(order) if isinstance(e, SwitchoverStart)), math.inf)
    mine = [(t, e) for t, e in enumerate(order) if isinstance(e, StateBuffer) and (e.idstr, e.instance) == state.key]
    arrived = {e.idx: t for t, e in mine}
    written_at = {j: max(max(arrived[i] for i in range(j + 1)), sw) for j in arrived}
    out = []
    for t, e in mine:
        queued = [j for j, a in arrived.items() if a <= t <= written_at[j]]
        out.append((t, e.idx, sum(state.size(j) for j in queued), len(queued)))
    return out


def check_against_forced(order, states, cap_list, *, record: bool = True) -> VfioLoadModel:
    m = model_for(states, cap_list)
    m.feed_all(order)
    first_break = None  # (position, state, idx, kind)
    for s, c in zip(states, cap_list):
        for t, idx, qb, qn in forced_queue(order, s):
            kind = ("buffers" if c.max_queued_buffers is not None and qn > c.max_queued_buffers else
                    "bytes" if c.max_queued_bytes is not None and qb > c.max_queued_bytes else None)
            if kind and (first_break is None or t < first_break[0]):
                first_break = (t, s, idx, kind)
            if kind:
                break
    for s, c in zip(states, cap_list):
        d = m.devices[s.key]
        before = [f for f in forced_queue(order, s) if first_break is None or f[0] < first_break[0]]
        assert d.peak_bytes == max((f[2] for f in before), default=0), (s, c)
        assert d.peak_buffers == max((f[3] for f in before), default=0), (s, c)
        assert c.max_queued_bytes is None or d.peak_bytes <= c.max_queued_bytes
        assert c.max_queued_buffers is None or d.peak_buffers <= c.max_queued_buffers
    if record:
        event("loaded" if first_break is None else f"cap exceeded ({first_break[3]})")
    if first_break is None:
        assert m.violations == [], [v.message for v in m.violations]
        for s in states:
            d = m.devices[s.key]
            assert d.written == list(range(s.last_idx)) and d.config_loaded
            assert d.queued_bytes == 0 and d.queued == {}
    else:
        t, s, idx, kind = first_break
        assert m.codes == ["queue-cap-exceeded"], (describe_order(order), [v.message for v in m.violations])
        v = m.violations[0]
        assert v.severity.value == "reject" and v.channel == order[t].channel
        want = "the size max of" if kind == "bytes" else "the max of"
        assert v.message.startswith(f"{s.idstr}: queuing state buffer {idx} would exceed {want}"), v.message
    return m


@st.composite
def devices_orders_caps(draw, any_order: bool = False):
    states = draw(device_sets())
    cap_list = [draw(caps(s)) for s in states]
    order = draw(any_arrival_orders(states) if any_order else arrival_orders(states))
    return states, order, cap_list


@given(devices_orders_caps())
def test_loaded_in_order_with_the_forced_peak_or_failed_at_the_first_packet_over_the_cap(case):
    check_against_forced(*_order(case))


@given(devices_orders_caps(any_order=True))
def test_same_for_any_permutation_of_the_packets(case):
    check_against_forced(*_order(case))


def _order(case):
    states, order, cap_list = case
    return order, states, cap_list


@given(device_states(), st.data())
def test_without_caps_everything_loads_and_the_peak_is_the_forced_one(state, data):
    order = data.draw(arrival_orders(state, switchover="first"))
    m = check_against_forced(order, (state,), [Cap()])
    d = m.devices[state.key]
    in_order = [e.idx for e in order if isinstance(e, StateBuffer)] == list(range(state.last_idx + 1))
    if in_order:  # arriving in idx order after the start, only the buffer at hand is ever queued
        assert d.peak_buffers == 1 and d.peak_bytes == max(state.size(i) for i in range(state.last_idx + 1))


# --- hypothesis finds the smallest arrival order that breaks a cap ----------------------------------------

FIND_SETTINGS = settings(max_examples=5000, database=None, deadline=None, phases=[Phase.generate, Phase.shrink],
                         suppress_health_check=list(HealthCheck))


def test_hypothesis_finds_a_minimal_arrival_order_over_the_cap(capsys):
    """Five 8-byte buffers (4 data + config) on two channels, the load started first, a cap
    of 16 bytes: in idx order at most 8 bytes are ever queued. Hypothesis finds an order
    that breaks the cap and shrinks it to one packet sent on the second channel and held
    back: two buffers above the gap fill the queue, and the packet that would close the gap
    breaks the cap itself (QEMU counts a buffer in before the load thread can write it)."""
    state = DeviceState(DEV, 0, (8, 8, 8, 8), 8)
    cap = Cap(max_queued_bytes=16)

    def breaks(order) -> bool:
        m = model_for((state,), [cap])
        m.feed_all(order)
        return "queue-cap-exceeded" in m.codes

    order = find(arrival_orders(state, channels=2, switchover="first"), breaks, settings=FIND_SETTINGS,
                 random=random.Random(0))
    m = model_for((state,), [cap])
    m.feed_all(order)
    with capsys.disabled():
        print(f"\nshrunk arrival order for cap {cap}: {describe_order(order)}\n  -> {m.violations[0].message}")
    # minimal: a single packet off the first channel (one FIFO channel cannot reorder anything)
    off = [e for e in order if isinstance(e, StateBuffer) and e.channel != "multifd0"]
    assert len(off) == 1
    fail = next(f for f in forced_queue(order, state) if f[2] > 16)
    assert fail[2:] == (24, 3)  # three 8-byte buffers: the fewest that exceed 16 bytes
    assert m.violations[0].message == f"{DEV}: queuing state buffer {fail[1]} would exceed the size max of 16"
    assert m.devices[state.key].peak_bytes == 16  # reached, never exceeded
    check_against_forced(order, (state,), [cap], record=False)


# --- one example per violation -----------------------------------------------------------------------------


def one_device(**kw) -> VfioLoadModel:
    return VfioLoadModel([VfioDevice(DEV, 0, **kw)])


def buf(idx, data=b"d", **kw) -> StateBuffer:
    return StateBuffer.of(DEV, 0, idx, data, **kw)


def feed(m: VfioLoadModel, *events) -> list:
    return m.feed_all(events)


def test_complete_state_loads():
    m = one_device()
    assert feed(m, buf(1), SwitchoverStart(), buf(0), buf(2, config=True)) == []
    d = m.devices[(DEV, 0)]
    assert d.written == [0, 1] and d.config_loaded and d.peak_buffers == 2 and d.peak_bytes == 2


def test_unknown_device():
    m = one_device()
    (v,) = feed(m, SwitchoverStart(), StateBuffer.of("0000:00:09.0/vfio", 0, 0, b"x"))
    assert (v.code, v.severity.value) == ("state-buffer-unknown-device", "reject")
    assert v.message == "Unknown idstr 0000:00:09.0/vfio or instance id 0 for load state buffer"
    (v,) = feed(one_device(), StateBuffer.of(DEV, 1, 0, b"x"))
    assert v.message == f"Unknown idstr {DEV} or instance id 1 for load state buffer"


def test_device_not_doing_multifd():
    (v,) = feed(one_device(multifd=False), buf(0))
    assert v.code == "state-buffer-not-multifd" and v.message == f"{DEV}: got device state packet but not doing multifd transfer"


def test_packet_too_short():
    (v,) = feed(one_device(), StateBuffer(DEV, 0, b"\0" * 11))
    assert v.code == "state-buffer-too-short" and v.message == f"{DEV}: packet too short at 11 (min is 12)"


def test_unknown_version():
    (v,) = feed(one_device(), buf(0, version=1))
    assert v.code == "state-buffer-version" and v.message == f"{DEV}: packet has unknown version 1"


def test_invalid_idx():
    (v,) = feed(one_device(), buf(0xFFFFFFFF))
    assert v.code == "state-buffer-invalid-idx" and v.message == f"{DEV}: packet index is invalid"


def test_duplicate_idx_before_and_after_it_was_written():
    (v,) = feed(one_device(), buf(1), buf(1))
    assert (v.code, v.severity.value) == ("state-buffer-duplicate", "reject")
    assert v.message == f"{DEV}: state buffer 1 already filled"
    # written buffers stay "present": a late copy of idx 0 fails the same way
    (v,) = feed(one_device(), SwitchoverStart(), buf(0), buf(0))
    assert v.message == f"{DEV}: state buffer 0 already filled"


def test_queue_cap_on_bytes_fails_at_the_packet_that_would_break_it():
    m = one_device(max_queued_bytes=10)
    (v,) = feed(m, SwitchoverStart(), buf(1, b"12345"), buf(2, b"12345"), buf(3, b"1"))
    assert (v.code, v.severity.value) == ("queue-cap-exceeded", "reject")
    assert v.message == f"{DEV}: queuing state buffer 3 would exceed the size max of 10"
    assert m.devices[(DEV, 0)].peak_bytes == 10  # exactly the cap, never above


def test_queue_cap_on_buffer_count():
    m = one_device(max_queued_buffers=2)
    (v,) = feed(m, buf(0), buf(1), buf(2))  # before SWITCHOVER_START nothing is written
    assert v.message == f"{DEV}: queuing state buffer 2 would exceed the max of 2"
    assert m.devices[(DEV, 0)].peak_buffers == 2


def test_data_after_config_is_never_written():
    m = one_device()
    vs = feed(m, SwitchoverStart(), buf(0), buf(1, config=True), buf(2))
    assert [(v.code, v.severity.value) for v in vs] == [("state-buffer-after-config", "silent-loss")]
    assert "state buffer 2 lies above the config-state packet's idx 1" in vs[0].message
    d = m.devices[(DEV, 0)]
    assert d.written == [0] and d.config_loaded and d.queued == {2: 1}


def test_config_below_buffers_already_queued():
    vs = feed(one_device(), buf(3), SwitchoverStart(), buf(0), buf(1, config=True))
    assert [v.code for v in vs] == ["state-buffer-after-config"]
    assert "state buffers 3 lie above the config-state packet's idx 1" in vs[0].message


def test_second_config_packet_moves_the_last_index():
    vs = feed(one_device(), buf(1, config=True), buf(3, config=True), SwitchoverStart(), buf(0), buf(2))
    assert vs[0].code == "state-buffer-after-config" and "moves the last index from 1" in vs[0].message


def test_missing_buffer_hangs():
    m = one_device()
    (v,) = feed(m, SwitchoverStart(), buf(0), buf(2), buf(4), buf(5, config=True))
    assert (v.code, v.severity.value) == ("state-buffer-missing", "reject")
    assert "waits at state buffer 1: buffers 1, 3 never arrived" in v.message


def test_missing_config_hangs():
    (v,) = feed(one_device(), SwitchoverStart(), buf(0), buf(1))
    assert v.code == "state-buffer-missing" and "the config-state packet never arrived" in v.message
    (v,) = feed(one_device(), SwitchoverStart())
    assert v.code == "state-buffer-missing" and "nothing arrived" in v.message


def test_no_switchover_start():
    (v,) = feed(one_device(), buf(0), buf(1, config=True))
    assert (v.code, v.severity.value) == ("switchover-start-missing", "reject")


def test_the_first_reject_ends_the_load():
    m = one_device(max_queued_buffers=1)
    vs = feed(m, buf(0), buf(1), buf(1), StateBuffer.of("x", 0, 0))
    assert [v.code for v in vs] == ["queue-cap-exceeded"] and m.failed is vs[0]


def test_from_a_multifd_device_state_packet():
    payload = build_device_state(VfioDeviceState(idx=0, flags=1, data=b"cfg"))
    p = MultifdDeviceStatePacket(offset=64, channel="multifd1", idstr=DEV, instance_id=0,
                                 next_packet_size=len(payload), payload=payload)
    ev = StateBuffer.from_packet(p)
    assert (ev.idx, ev.is_config, ev.data_size, ev.channel, ev.at) == (0, True, 3, "multifd1", 64)
    m = one_device()
    assert feed(m, SwitchoverStart(), ev) == [] and m.devices[(DEV, 0)].config_loaded


# --- speed -----------------------------------------------------------------------------------------------


@pytest.mark.bench
def test_bench_vfio_orders_per_second(benchmark):
    cases = []

    @settings(max_examples=300, database=None, phases=[Phase.generate])
    @given(devices_orders_caps())
    def collect(case):
        cases.append(case)

    t0 = time.perf_counter()
    collect()
    gen = time.perf_counter() - t0

    def all_cases():
        for states, order, cap_list in cases:
            model_for(states, cap_list).feed_all(order)

    benchmark(all_cases)
    per_s = len(cases) / benchmark.stats.stats.mean
    benchmark.extra_info.update(orders_per_s=round(per_s), hypothesis_examples_per_s=round(len(cases) / gen))
    print(f"\nVFIO model: {per_s:,.0f} arrival orders/s; hypothesis generation + model: {len(cases) / gen:,.0f} examples/s")
