"""Reference model of a destination reassembling VFIO device state sent over multifd (QEMU
hw/vfio/migration-multifd.c, 10.0/10.1; the codes: docs/violations.md),
sans-IO: buffer arrivals in, per-device load state and violations out. No device here.

Each device-state packet carries a VFIODeviceStatePacket (be32 version 0, be32 idx, be32
flags, data) for one device (idstr, instance). The destination

* checks the packet (in QEMU's order): device known, device in multifd mode, at least 12
  bytes, version 0, idx not UINT32_MAX;
* a CONFIG_STATE packet sets the device's last index (before the insert, as QEMU does);
* stores the buffer by idx: an idx already filled is an error; then counts it as queued
  and checks the device's caps — queued bytes (QEMU 10.1 `x-migration-max-queued-buffers-size`,
  default unlimited) and queued buffers (a count cap, as the series' earlier
  `x-migration-max-queued-buffers`): the packet that would take the queue above a cap fails
  the load, so the queue never exceeds it;
* once SWITCHOVER_START has been processed, a load thread writes buffers to the device
  strictly by idx from 0, waiting at gaps; reaching the last index it loads the config
  and the device is done. Written buffers leave the queue.

The model writes a buffer the moment the thread could (the device takes data instantly), so
its queue is the smallest any real destination has for that arrival order: a cap the model
breaks, QEMU breaks too. Peaks are recorded per device.

Violations (first reject ends the load; nothing after it is processed):
  state-buffer-unknown-device  reject   Unknown idstr %s or instance id %u for load state buffer
  state-buffer-not-multifd     reject   %s: got device state packet but not doing multifd transfer
  state-buffer-too-short       reject   %s: packet too short at %zu (min is %zu)
  state-buffer-version         reject   %s: packet has unknown version %u
  state-buffer-invalid-idx     reject   %s: packet index is invalid
  state-buffer-duplicate       reject   %s: state buffer %u already filled
  queue-cap-exceeded           reject   %s: queuing state buffer %u would exceed the size max of %lu
                                        (count cap: ... would exceed the max of %lu)
  state-buffer-after-config    silent-loss  a buffer above the config packet's idx, or a second
                                        config packet: QEMU accepts it, the load stops at the
                                        config index and never writes what lies above it
  state-buffer-missing         reject   at the end a device's load is incomplete (a gap, or no
                                        config packet): the load thread waits for ever, the
                                        destination hangs
  switchover-start-missing     reject   buffers queued but no SWITCHOVER_START: the load thread
                                        never starts
Not modelled: `x-migration-load-config-after-iter` (waiting for DEV_CONFIG_LOAD_READY).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Iterable, Union

from wireformat.multifd import MultifdDeviceStatePacket
from wireformat.vfio import (
    VFIO_DEVICE_STATE_CONFIG_STATE,
    VFIO_DEVICE_STATE_IDX_INVALID,
    VFIO_DEVICE_STATE_PACKET_HEADER_SIZE,
    VFIO_DEVICE_STATE_PACKET_VER_CURRENT,
)

from conformance.rules.catalogue import Code, Violation
from conformance.rules.sink import MAX_VIOLATIONS, ViolationSink

_HEAD = struct.Struct(">III")


# --- events -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StateBuffer:
    """A device-state packet for (idstr, instance) whose payload is a VFIODeviceStatePacket."""

    idstr: str
    instance: int
    payload: bytes
    channel: str = "multifd0"
    at: int = 0

    @classmethod
    def of(cls, idstr: str, instance: int, idx: int, data: bytes = b"", *, config: bool = False, version: int = 0,
           flags: int | None = None, channel: str = "multifd0", at: int = 0) -> "StateBuffer":
        f = (VFIO_DEVICE_STATE_CONFIG_STATE if config else 0) if flags is None else flags
        return cls(idstr, instance, _HEAD.pack(version, idx, f) + data, channel, at)

    @classmethod
    def from_packet(cls, p: MultifdDeviceStatePacket) -> "StateBuffer":
        return cls(p.idstr, p.instance_id, bytes(p.payload), p.channel, p.offset)

    @property
    def idx(self) -> int | None:
        return _HEAD.unpack_from(self.payload)[1] if len(self.payload) >= 12 else None

    @property
    def is_config(self) -> bool:
        return len(self.payload) >= 12 and bool(_HEAD.unpack_from(self.payload)[2] & VFIO_DEVICE_STATE_CONFIG_STATE)

    @property
    def data_size(self) -> int:
        return max(0, len(self.payload) - VFIO_DEVICE_STATE_PACKET_HEADER_SIZE)


@dataclass(frozen=True, slots=True)
class SwitchoverStart:
    """MIG_CMD_SWITCHOVER_START processed on the main stream: the load threads start."""

    at: int = 0


VfioEvent = Union[StateBuffer, SwitchoverStart]


# --- devices --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VfioDevice:
    """A destination device: its caps (None = unlimited, QEMU's default) and whether it
    takes its state over multifd (`x-migration-multifd-transfer`)."""

    idstr: str
    instance: int = 0
    max_queued_bytes: int | None = None
    max_queued_buffers: int | None = None
    multifd: bool = True

    @property
    def key(self) -> tuple[str, int]:
        return (self.idstr, self.instance)


@dataclass
class DeviceLoad:
    """What the destination holds for one device."""

    device: VfioDevice
    queued: dict[int, int] = field(default_factory=dict)  # idx -> data size, not yet written
    present: set[int] = field(default_factory=set)  # every idx ever filled (QEMU keeps is_present)
    next_idx: int = 0  # load_buf_idx
    last_idx: int | None = None  # set by the config packet
    written: list[int] = field(default_factory=list)  # idx order the device got its data in
    config_loaded: bool = False
    queued_bytes: int = 0
    peak_bytes: int = 0
    peak_buffers: int = 0
    arrivals: int = 0

    @property
    def done(self) -> bool:
        return self.config_loaded

    @property
    def name(self) -> str:
        return f"{self.device.idstr}/{self.device.instance}"


class VfioLoadModel:
    """Device-state reassembly for the destination's `devices`."""

    def __init__(self, devices: Iterable[VfioDevice], *, max_violations: int = MAX_VIOLATIONS):
        self.devices: dict[tuple[str, int], DeviceLoad] = {d.key: DeviceLoad(d) for d in devices}
        self.started = False
        self.sink = ViolationSink(cap=max_violations)
        self.violations: list[Violation] = self.sink.violations
        self._closed = False

    @property
    def failed(self) -> Violation | None:
        """The first reject: the destination stops reading there."""
        return self.sink.first_reject

    # -- input

    def feed(self, ev: VfioEvent) -> list[Violation]:
        if self.failed is not None:
            return []
        if type(ev) is SwitchoverStart:
            self.started = True
            for d in self.devices.values():
                self._drain(d)
            return []
        start = len(self.violations)
        self._buffer(ev)
        return self.sink.since(start)

    def feed_all(self, events: Iterable[VfioEvent]) -> list[Violation]:
        for ev in events:
            self.feed(ev)
        self.close()
        return self.violations

    def close(self) -> list[Violation]:
        if self._closed or self.failed is not None:
            self._closed = True
            return []
        self._closed = True
        start = len(self.violations)
        for d in self.devices.values():
            if d.done or not d.device.multifd:
                continue
            if not self.started and d.queued:
                self._v(Code.SWITCHOVER_START_MISSING, "main", 0,
                        f"{d.name}: {len(d.queued)} state buffers queued but SWITCHOVER_START never came: the load "
                        "thread that writes them never starts")
                continue
            top = max(d.present, default=-1)
            gaps = [i for i in range(d.next_idx, top + 1) if i not in d.present]
            what = []
            if not d.present:
                what.append("nothing arrived")
            elif gaps:
                what.append(f"buffers {_ranges(gaps)} never arrived")
            if d.present and d.last_idx is None:
                what.append("the config-state packet never arrived")
            self._v(Code.STATE_BUFFER_MISSING, "multifd", 0,
                    f"{d.name}: the load waits at state buffer {d.next_idx}: {'; '.join(what)} "
                    "— the destination hangs")
        return self.sink.since(start)

    # -- results

    @property
    def codes(self) -> list[str]:
        return [v.code for v in self.violations]

    def stats(self) -> dict:
        return {d.name: {"written": len(d.written), "config_loaded": d.config_loaded, "peak_bytes": d.peak_bytes,
                         "peak_buffers": d.peak_buffers, "queued_bytes": d.queued_bytes}
                for d in self.devices.values()}

    # -- internals

    def _v(self, code: Code, channel: str, offset: int, message: str) -> None:
        self.sink.emit(code, channel, offset, message)

    def _buffer(self, ev: StateBuffer) -> None:
        ch, at = ev.channel, ev.at
        d = self.devices.get((ev.idstr, ev.instance))
        if d is None:
            return self._v(Code.STATE_BUFFER_UNKNOWN_DEVICE, ch, at,
                           f"Unknown idstr {ev.idstr} or instance id {ev.instance} for load state buffer")
        name = ev.idstr
        if not d.device.multifd:
            return self._v(Code.STATE_BUFFER_NOT_MULTIFD, ch, at,
                           f"{name}: got device state packet but not doing multifd transfer")
        n = len(ev.payload)
        if n < VFIO_DEVICE_STATE_PACKET_HEADER_SIZE:
            return self._v(Code.STATE_BUFFER_TOO_SHORT, ch, at,
                           f"{name}: packet too short at {n} (min is {VFIO_DEVICE_STATE_PACKET_HEADER_SIZE})")
        version, idx, flags = _HEAD.unpack_from(ev.payload)
        if version != VFIO_DEVICE_STATE_PACKET_VER_CURRENT:
            return self._v(Code.STATE_BUFFER_VERSION, ch, at, f"{name}: packet has unknown version {version}")
        if idx == VFIO_DEVICE_STATE_IDX_INVALID:
            return self._v(Code.STATE_BUFFER_INVALID_IDX, ch, at, f"{name}: packet index is invalid")
        d.arrivals += 1
        is_config = bool(flags & VFIO_DEVICE_STATE_CONFIG_STATE)
        previous_last = d.last_idx
        if is_config:
            d.last_idx = idx  # QEMU sets the last index before it looks at the slot
        if idx in d.present:
            return self._v(Code.STATE_BUFFER_DUPLICATE, ch, at, f"{name}: state buffer {idx} already filled")
        size = n - VFIO_DEVICE_STATE_PACKET_HEADER_SIZE
        cap_b, cap_n = d.device.max_queued_bytes, d.device.max_queued_buffers
        if cap_n is not None and len(d.queued) + 1 > cap_n:
            return self._v(Code.QUEUE_CAP_EXCEEDED, ch, at,
                           f"{name}: queuing state buffer {idx} would exceed the max of {cap_n}")
        if cap_b is not None and d.queued_bytes + size > cap_b:
            return self._v(Code.QUEUE_CAP_EXCEEDED, ch, at,
                           f"{name}: queuing state buffer {idx} would exceed the size max of {cap_b}")
        if is_config:
            if previous_last is not None and previous_last != idx:
                self._v(Code.STATE_BUFFER_AFTER_CONFIG, ch, at,
                        f"{name}: a second config-state packet (idx {idx}) moves the last index from {previous_last}")
            above = sorted(i for i in d.present if i > idx)
            if above:
                self._v(Code.STATE_BUFFER_AFTER_CONFIG, ch, at,
                        f"{name}: state buffers {_ranges(above)} lie above the config-state packet's idx {idx}: the "
                        "load stops at the config and never writes them")
        elif d.last_idx is not None and idx > d.last_idx:
            self._v(Code.STATE_BUFFER_AFTER_CONFIG, ch, at,
                    f"{name}: state buffer {idx} lies above the config-state packet's idx {d.last_idx}: the load stops "
                    "at the config and never writes it")
        d.present.add(idx)
        d.queued[idx] = size
        d.queued_bytes += size
        if d.queued_bytes > d.peak_bytes:
            d.peak_bytes = d.queued_bytes
        if len(d.queued) > d.peak_buffers:
            d.peak_buffers = len(d.queued)
        if self.started:
            self._drain(d)

    def _drain(self, d: DeviceLoad) -> None:
        q = d.queued
        while not d.config_loaded and d.next_idx in q:
            i = d.next_idx
            d.queued_bytes -= q.pop(i)
            if i == d.last_idx:
                d.config_loaded = True  # the thread loads the config and ends
            else:
                d.written.append(i)
                d.next_idx = i + 1


def _ranges(idxs: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    out, start, prev = [], None, None
    for i in idxs:
        if start is None:
            start = prev = i
        elif i == prev + 1:
            prev = i
        else:
            out.append(f"{start}-{prev}" if prev > start else str(start))
            start = prev = i
    if start is not None:
        out.append(f"{start}-{prev}" if prev > start else str(start))
    return ", ".join(out)
