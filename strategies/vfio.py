"""Hypothesis strategies for VFIO device state sent over multifd (QEMU hw/vfio/migration-multifd.c;
model: conformance.rules.vfio_model): what a source's save threads send, the orders a destination
can receive it in, and the destination's queue caps.

A source's save thread sends a device's data buffers idx 0 … k-1, then the config packet
(idx k, flag CONFIG_STATE), each on some multifd channel; every channel is FIFO, channels
are not ordered among themselves, and the main stream's SWITCHOVER_START (which starts the
load threads) is not ordered against them either. `arrival_orders` draws such an arrival
order; `any_arrival_orders` any permutation at all.

Orders are drawn so that they shrink well: each packet's channel is drawn with the packet,
and the interleaving of channels as a plan of steps (channel number, burst; burst 0 = all
the channel has), completed channel by channel when the plan runs out.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

from conformance.rules.vfio_model import StateBuffer, SwitchoverStart, VfioDevice, VfioEvent

DEVICE_NAMES = ("0000:00:02.0/vfio", "0000:00:03.0/vfio", "0000:00:04.0/vfio")


@dataclass(frozen=True)
class DeviceState:
    """What one device's save thread sends: data buffers of `sizes` bytes, then a config
    packet of `config_size` bytes."""

    idstr: str
    instance: int
    sizes: tuple[int, ...]
    config_size: int = 8

    @property
    def key(self) -> tuple[str, int]:
        return (self.idstr, self.instance)

    @property
    def last_idx(self) -> int:
        return len(self.sizes)

    def size(self, idx: int) -> int:
        return self.sizes[idx] if idx < len(self.sizes) else self.config_size

    def buffers(self, channel: str = "multifd0") -> list[StateBuffer]:
        out = [StateBuffer.of(self.idstr, self.instance, i, bytes([i & 0xFF]) * n, channel=channel)
               for i, n in enumerate(self.sizes)]
        out.append(StateBuffer.of(self.idstr, self.instance, len(self.sizes), b"\xc0" * self.config_size, config=True,
                                  channel=channel))
        return out

    def device(self, max_queued_bytes: int | None = None, max_queued_buffers: int | None = None) -> VfioDevice:
        return VfioDevice(self.idstr, self.instance, max_queued_bytes, max_queued_buffers)


@dataclass(frozen=True)
class Cap:
    """A destination device's caps (None: unlimited, QEMU's default)."""

    max_queued_bytes: int | None = None
    max_queued_buffers: int | None = None

    def __str__(self) -> str:
        parts = [f"bytes<={self.max_queued_bytes}" if self.max_queued_bytes is not None else "",
                 f"buffers<={self.max_queued_buffers}" if self.max_queued_buffers is not None else ""]
        return ", ".join(p for p in parts if p) or "unlimited"


@st.composite
def device_states(draw, idstr=None, instance: int = 0, buffers=st.integers(0, 6), size=st.integers(0, 64),
                  config_size=st.integers(1, 32)) -> DeviceState:
    name = draw(st.sampled_from(DEVICE_NAMES)) if idstr is None else idstr
    n = draw(buffers) if isinstance(buffers, st.SearchStrategy) else buffers
    sizes = tuple(draw(size) if isinstance(size, st.SearchStrategy) else size for _ in range(n))
    cs = draw(config_size) if isinstance(config_size, st.SearchStrategy) else config_size
    return DeviceState(name, instance, sizes, cs)


@st.composite
def device_sets(draw, max_devices: int = 2, **kw) -> tuple[DeviceState, ...]:
    """1 … max_devices devices with distinct (idstr, instance)."""
    n = draw(st.integers(1, max_devices))
    return tuple(draw(device_states(idstr=DEVICE_NAMES[i], **kw)) for i in range(n))


@st.composite
def caps(draw, state: DeviceState, kind=None) -> Cap:
    """A cap for a device's state: none, on queued bytes, on queued buffers, or both
    (`kind` one of "none", "bytes", "buffers", "both"; default any). Bytes caps range over
    0 … the whole state, buffer caps over 1 … all buffers, so both failing and passing
    orders come up."""
    kind = draw(st.sampled_from(["none", "bytes", "buffers", "both"])) if kind is None else kind
    total = sum(state.sizes) + state.config_size
    b = draw(st.integers(0, total)) if kind in ("bytes", "both") else None
    n = draw(st.integers(1, state.last_idx + 1)) if kind in ("buffers", "both") else None
    return Cap(b, n)


_steps = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 8)), max_size=32)


@st.composite
def arrival_orders(draw, states: tuple[DeviceState, ...] | DeviceState, channels=st.integers(1, 4),
                   switchover: str = "any") -> tuple[VfioEvent, ...]:
    """The events a destination receives, in arrival order. The devices' save threads send
    concurrently (their packets interleave in any way, each device's in idx order), each
    packet on a drawn channel; channels deliver FIFO, interleaved by a drawn plan.
    `switchover`: "any" (SWITCHOVER_START anywhere; shrinks to first), "first", "last",
    or "none"."""
    if isinstance(states, DeviceState):
        states = (states,)
    n = draw(channels) if isinstance(channels, st.SearchStrategy) else channels
    # send order: the devices' sequences merged; each packet with its channel
    queues = [list(s.buffers()) for s in states]
    lanes: list[list[StateBuffer]] = [[] for _ in range(n)]
    while any(queues):
        open_ = [q for q in queues if q]
        q = open_[draw(st.integers(0, len(open_) - 1))] if len(open_) > 1 else open_[0]
        c = draw(st.integers(0, n - 1))
        b = q.pop(0)
        lanes[c].append(StateBuffer(b.idstr, b.instance, b.payload, f"multifd{c}"))
    # arrival: the channels interleaved
    order: list[VfioEvent] = []
    steps = iter(draw(_steps))
    while any(lanes):
        i, burst = next(steps, (0, 0))
        for j in range(n):
            lane = lanes[(i + j) % n]
            if lane:
                break
        k = len(lane) if burst == 0 else min(burst, len(lane))
        order.extend(lane[:k])
        del lane[:k]
    if switchover == "any":
        order.insert(draw(st.integers(0, len(order))), SwitchoverStart())
    elif switchover == "first":
        order.insert(0, SwitchoverStart())
    elif switchover == "last":
        order.append(SwitchoverStart())
    elif switchover != "none":
        raise ValueError(f"switchover must be any, first, last or none, not {switchover!r}")
    return tuple(order)


@st.composite
def any_arrival_orders(draw, states: tuple[DeviceState, ...] | DeviceState, switchover: str = "any") -> tuple[VfioEvent, ...]:
    """Any permutation of the devices' packets (as with enough channels, one per packet)."""
    if isinstance(states, DeviceState):
        states = (states,)
    order: list[VfioEvent] = list(draw(st.permutations([b for s in states for b in s.buffers()])))
    if switchover == "any":
        order.insert(draw(st.integers(0, len(order))), SwitchoverStart())
    elif switchover == "first":
        order.insert(0, SwitchoverStart())
    elif switchover == "last":
        order.append(SwitchoverStart())
    return tuple(order)


def describe_order(order) -> str:
    """'SWITCHOVER_START, dev/0#1@multifd1, dev/0#0@multifd0, dev/0#2(config)@multifd0'."""
    out = []
    for ev in order:
        if isinstance(ev, SwitchoverStart):
            out.append("SWITCHOVER_START")
        else:
            dev = ev.idstr.split("/")[0][-4:]
            out.append(f"{dev}#{ev.idx}{'(config)' if ev.is_config else ''}[{ev.data_size}B]@{ev.channel}")
    return ", ".join(out)
