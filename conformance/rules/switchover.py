"""Switchover-ack (8.1+, QEMU migration/savevm.c, hw/vfio/migration.c): a sans-IO model of both ends and a
checker of what passes between them.

What each end decides, device by device (a VFIO device's precopy support depends on the
host's kernel driver, so the two ends can disagree about the same device):

* the destination, before it reads the first section, counts the devices whose
  `switchover_ack_needed` hook says yes ON THE DESTINATION (`Device.dst_ack_needed`),
  if its own `switchover-ack` capability is on;
* at OPEN_RETURN_PATH, with nothing to wait for, it sends SWITCHOVER_ACK at once;
* each device that supports precopy ON THE SOURCE (`Device.src_precopy`) sends
  DEV_INIT_DATA_SENT once its initial data is drained, if the source's capability is on;
  the destination takes one off its count per marker and acks when the count reaches 0;
* a DEV_INIT_DATA_SENT for a device the destination does not count, or with its
  capability off, fails the load ("Received INIT_DATA_SENT but switchover ack is not
  used"); one when the count is already 0 fails it too ("qemu_loadvm_approve_switchover
  failed, err=-22");
* the source, capability on and guest running, does not switch over before the ack. A
  stopped guest switches over without it (VERIFIED 10.0 with `-S`).

Hence the real deadlock: a device the destination counts whose source side never sends
the marker (the source's driver lacks precopy), or a destination with the capability off
under a source with it on — the count never reaches 0, no ack comes, and a running source
stays `active` forever (VERIFIED 10.0, the second case).

`advise=True` models a proposed fix (not in QEMU): right after OPEN_RETURN_PATH the
source tells the destination which devices will send DEV_INIT_DATA_SENT; the destination
waits for exactly those (its own hooks and capability no longer decide) and acks when
they have all come, at once if there are none. A destination understanding the advise is
new code anyway, so the advise also settles the capability: it is a negotiation.

The three parts are independent of any I/O:
  Source / Destination   the two ends; feed them events, they return the events they send
  SwitchoverChecker      an observer fed every event in the order it happened; reports
                         Violations (codes in the catalogue block "switchover-ack")
  run() / predict()      play a Setup to its end under a schedule; `predict` is the default
                         schedule, what a real pair of QEMUs is expected to do
  events_from_records / events_from_return_path
                         the same events read from a decoded capture (main stream with
                         VFIO markers; return-path messages), for the checker or to compare
                         with a prediction
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Iterable, Sequence

from wireformat.constants import MigCmd, MigRpMsg, SectionType
from wireformat.records import Command, DeviceState, Eof, Record, SectionHeader

from conformance.rules.catalogue import Code, Violation
from conformance.rules.sink import ViolationSink

MAIN, RP = "main", "return-path"
MSG_NOT_USED = "Received INIT_DATA_SENT but switchover ack is not used"
MSG_NOTHING_PENDING = "qemu_loadvm_approve_switchover failed, err=-22"
CAPS_ERROR = "Capability 'switchover-ack' requires capability 'return-path'"


class ProtocolError(Exception):
    """A model end asked to do what it cannot (a conforming source switching too early)."""


@dataclass(frozen=True)
class Device:
    """A device that may take part in switchover-ack (a VFIO device, in QEMU 8.1..10.2).

    src_precopy     the source side supports precopy: with the source's capability on it
                    sends DEV_INIT_DATA_SENT once its initial data is drained
    dst_ack_needed  the destination's switchover_ack_needed hook says yes: with the
                    destination's capability on it is counted as pending
    """

    name: str
    src_precopy: bool = True
    dst_ack_needed: bool = True

    @property
    def agrees(self) -> bool:
        return self.src_precopy == self.dst_ack_needed


@dataclass(frozen=True)
class Setup:
    devices: tuple[Device, ...] = ()
    src_switchover_ack: bool = True
    dst_switchover_ack: bool = True
    return_path: bool = True  # the source's return-path capability (it opens the return path)
    vm_running: bool = True  # the source guest runs; a stopped one does not wait for the ack
    advise: bool = False  # the proposed per-device advise (both ends)

    def __post_init__(self) -> None:
        if self.src_switchover_ack and not self.return_path:
            raise ValueError(CAPS_ERROR)  # QMP migrate-set-capabilities refuses it
        names = [d.name for d in self.devices]
        if len(set(names)) != len(names):
            raise ValueError(f"device names repeat: {names}")

    def device(self, name: str) -> Device:
        for d in self.devices:
            if d.name == name:
                return d
        raise KeyError(name)

    @property
    def source_waits(self) -> bool:
        """The source will not switch over before SWITCHOVER_ACK."""
        return self.src_switchover_ack and self.vm_running

    @property
    def senders(self) -> tuple[str, ...]:
        """Devices whose source side sends DEV_INIT_DATA_SENT."""
        if not self.src_switchover_ack:
            return ()
        return tuple(d.name for d in self.devices if d.src_precopy)

    @property
    def counted(self) -> tuple[str, ...]:
        """Devices the destination waits for (released QEMU: its own hooks)."""
        if self.advise:
            return self.senders  # what the source advised
        if not self.dst_switchover_ack:
            return ()
        return tuple(d.name for d in self.devices if d.dst_ack_needed)

    @property
    def unexpected_senders(self) -> tuple[str, ...]:
        """Devices whose DEV_INIT_DATA_SENT the destination refuses (the load fails)."""
        if self.advise:
            return ()
        expected = set(self.counted)
        return tuple(n for n in self.senders if n not in expected)


class Kind(str, Enum):
    OPEN_RETURN_PATH = "OPEN_RETURN_PATH"  # main stream command
    ADVISE = "SWITCHOVER_ACK_ADVISE"  # proposed main stream command: the devices that will send the marker
    INIT_DATA_SENT = "DEV_INIT_DATA_SENT"  # VFIO marker in the device's PART section
    PING = "PING"  # main stream command (value 1 after OPEN_RETURN_PATH)
    SWITCHOVER = "SWITCHOVER"  # the source starts completion (SWITCHOVER_START / END sections)
    EOF = "EOF"  # end of the main stream
    SWITCHOVER_ACK = "SWITCHOVER_ACK"  # return path
    PONG = "PONG"  # return path
    SHUT = "SHUT"  # return path, last message: 0 ok, 1 error


RP_KINDS = frozenset({Kind.SWITCHOVER_ACK, Kind.PONG, Kind.SHUT})


@dataclass(frozen=True)
class Event:
    kind: Kind
    device: str | None = None  # INIT_DATA_SENT
    devices: tuple[str, ...] = ()  # ADVISE
    value: int | None = None  # PING / PONG / SHUT
    offset: int = 0  # where it happened (step number in a simulation, byte offset in a capture)

    @property
    def channel(self) -> str:
        return RP if self.kind in RP_KINDS else MAIN

    def label(self) -> str:
        if self.kind is Kind.INIT_DATA_SENT:
            return f"{self.kind.value}({self.device})"
        if self.kind is Kind.ADVISE:
            return f"{self.kind.value}({', '.join(self.devices)})"
        if self.value is not None:
            return f"{self.kind.value} {self.value}"
        return self.kind.value


# --------------------------------------------------------------------------- the two ends
class Destination:
    """The destination end. `receive(event)` returns the return-path messages it sends."""

    def __init__(self, setup: Setup):
        self.setup = setup
        self.capability = setup.dst_switchover_ack
        self.advise = setup.advise
        # counted before the first section is read (released QEMU); with the advise, later
        self.pending: list[str] = [] if setup.advise else list(setup.counted)
        self.count = len(self.pending)
        self.advised: tuple[str, ...] | None = None
        self.rp_open = False
        self.ack_sent = False
        self.failed: str | None = None
        self.loaded = False  # EOF reached without failure

    @property
    def uses_ack(self) -> bool:
        return self.advised is not None if self.advise else self.capability

    def receive(self, ev: Event) -> list[Event]:
        if self.failed is not None:
            return []
        k = ev.kind
        if k is Kind.OPEN_RETURN_PATH:
            self.rp_open = True
            if not self.advise and self.capability and self.count == 0:
                return self._ack()
        elif k is Kind.ADVISE:
            self.advised = tuple(ev.devices)
            self.pending, self.count = list(ev.devices), len(ev.devices)
            if self.count == 0:
                return self._ack()
        elif k is Kind.PING:
            return [Event(Kind.PONG, value=ev.value)] if self.rp_open else []
        elif k is Kind.INIT_DATA_SENT:
            return self._init_data_sent(ev.device)
        elif k is Kind.EOF:
            self.loaded = True
            return [Event(Kind.SHUT, value=0)] if self.rp_open else []
        return []

    def _init_data_sent(self, name: str | None) -> list[Event]:
        if self.advise:
            expected = self.advised is not None and name in self.advised
        else:
            dev = next((d for d in self.setup.devices if d.name == name), None)
            expected = self.capability and dev is not None and dev.dst_ack_needed
        if not expected:
            return self._fail(MSG_NOT_USED)
        if self.count == 0:
            return self._fail(MSG_NOTHING_PENDING)
        # QEMU keeps a count, not a set: any expected device takes one off
        self.count -= 1
        if name in self.pending:
            self.pending.remove(name)
        if self.count == 0:
            return self._ack()
        return []

    def _ack(self) -> list[Event]:
        if self.ack_sent or not self.rp_open:
            return []
        self.ack_sent = True
        return [Event(Kind.SWITCHOVER_ACK)]

    def _fail(self, message: str) -> list[Event]:
        self.failed = message
        return [Event(Kind.SHUT, value=1)] if self.rp_open else []


class Source:
    """The source end. Its methods return the main-stream events it sends."""

    def __init__(self, setup: Setup, *, waits_for_ack: bool = True):
        self.setup = setup
        self.waits_for_ack = waits_for_ack  # False: a non-conforming source, for the checker's sake
        self.acked = False
        self.drained: set[str] = set()
        self.sent_marker: set[str] = set()
        self.switched = False
        self.peer_failed = False
        self.finished = False

    def open(self) -> list[Event]:
        s = self.setup
        out: list[Event] = []
        if s.return_path:
            out.append(Event(Kind.OPEN_RETURN_PATH))
            if s.advise and s.src_switchover_ack:
                out.append(Event(Kind.ADVISE, devices=s.senders))
            out.append(Event(Kind.PING, value=1))
        return out

    def drain(self, name: str) -> list[Event]:
        """`name`'s initial precopy data has gone out."""
        self.setup.device(name)  # KeyError for a device the setup lacks
        if self.switched or name in self.drained:
            return []
        self.drained.add(name)
        if name in self.setup.senders:
            self.sent_marker.add(name)
            return [Event(Kind.INIT_DATA_SENT, device=name)]
        return []

    def receive(self, ev: Event) -> None:
        if ev.kind is Kind.SWITCHOVER_ACK:
            self.acked = True
        elif ev.kind is Kind.SHUT and ev.value:
            self.peer_failed = True  # "Sibling indicated error"
        elif ev.kind is Kind.SHUT:
            self.finished = True

    def may_switch_over(self) -> bool:
        return not self.setup.source_waits or self.acked

    def switch_over(self) -> list[Event]:
        if self.switched:
            return []
        if self.waits_for_ack and not self.may_switch_over():
            raise ProtocolError("the source may not switch over before SWITCHOVER_ACK")
        self.switched = True
        # devices still draining send nothing more before completion
        return [Event(Kind.SWITCHOVER), Event(Kind.EOF)]


# --------------------------------------------------------------------------- the checker
class SwitchoverChecker:
    """Fed every event of one migration in the order it happened (both channels), says
    where the exchange breaks switchover-ack. It knows both ends' device settings (the
    `Setup`), which no single end does."""

    def __init__(self, setup: Setup, *, return_path_seen: bool = True):
        """return_path_seen=False: only the main stream is fed; the source is taken to
        have received whatever the modelled destination sent."""
        self.setup = setup
        self.return_path_seen = return_path_seen
        self.dst = Destination(setup)  # the destination as QEMU behaves
        self.sink = ViolationSink()
        self.violations: list[Violation] = self.sink.violations
        self.acked = False
        self.switched = False
        self._unreachable_reported = False

    def _v(self, code: Code, channel: str, offset: int, message: str, section: str | None = None) -> None:
        self.sink.emit(code, channel, offset, message, section)

    def feed(self, ev: Event) -> list[Violation]:
        start = len(self.violations)
        k = ev.kind
        if self.dst.failed is not None:
            return []  # the destination has stopped reading: nothing after this matters
        if k in (Kind.OPEN_RETURN_PATH, Kind.ADVISE, Kind.INIT_DATA_SENT, Kind.PING, Kind.EOF):
            self.dst.receive(ev)
            if self.dst.failed is not None:
                self._v(Code.INIT_DATA_SENT_UNEXPECTED, MAIN, ev.offset, self.dst.failed, ev.device)
            if k in (Kind.OPEN_RETURN_PATH, Kind.ADVISE):
                self._check_reachable(ev)
            if not self.return_path_seen and self.dst.ack_sent:
                self.acked = True
        elif k is Kind.SWITCHOVER_ACK:
            self.acked = True
        elif k is Kind.SWITCHOVER:
            self.switched = True
            if self.setup.source_waits and not self.acked:
                why = (f"{self.dst.count} device(s) still pending on the destination"
                       if self.dst.uses_ack else "the destination does not use switchover-ack")
                self._v(Code.SWITCHOVER_BEFORE_ACK, MAIN, ev.offset,
                        f"the source switched over before SWITCHOVER_ACK ({why}); the guest runs, so it must wait")
        return self.violations[start:]

    def _check_reachable(self, ev: Event) -> None:
        """Once the destination has counted (and seen the advise), can the count reach 0?"""
        s = self.setup
        if self._unreachable_reported or not s.source_waits or not s.return_path:
            return
        if s.advise and ev.kind is Kind.OPEN_RETURN_PATH:
            return  # the advise follows
        if s.unexpected_senders:
            return  # a refused DEV_INIT_DATA_SENT will fail the load first: no hang
        senders = set(s.senders)
        if s.advise or self.dst.capability:
            missing = [n for n in self.dst.pending if n not in senders]
            if not missing:
                return
            self._unreachable_reported = True
            detail = "; ".join(
                f"{n}: the destination needs an ack, the source side has no precopy support and never sends "
                f"DEV_INIT_DATA_SENT" for n in missing)
            self._v(Code.SWITCHOVER_ACK_UNREACHABLE, MAIN, ev.offset,
                    f"the destination waits for {len(missing)} device(s) that never send DEV_INIT_DATA_SENT ({detail}): "
                    "no SWITCHOVER_ACK, the running source never switches over", missing[0])
        else:
            self._unreachable_reported = True
            self._v(Code.SWITCHOVER_ACK_UNREACHABLE, MAIN, ev.offset,
                    "the source uses switchover-ack, the destination does not: it never sends SWITCHOVER_ACK and the "
                    "running source never switches over")

    def close(self) -> list[Violation]:
        return []


# --------------------------------------------------------------------------- simulation
@dataclass
class Outcome:
    """How a Setup played out. status: the source's final status in query-migrate terms:
    "completed", "active" (waiting for an ack that never comes), "failed"."""

    status: str
    ack_sent: bool
    ack_immediate: bool  # sent in answer to OPEN_RETURN_PATH (or, with the advise, to the advise)
    return_path: list[str]  # RP messages in order, e.g. ["SWITCHOVER_ACK", "PONG 1", "SHUT 0"]
    violations: list[Violation]
    events: list[Event] = field(default_factory=list)  # everything, in global order
    destination_error: str | None = None

    @property
    def codes(self) -> list[str]:
        return [v.code for v in self.violations]


def run(setup: Setup, drain_order: Sequence[str] | None = None, *, rp_lag: int = 0,
        waits_for_ack: bool = True, switch_after: int | None = None) -> Outcome:
    """Play `setup` to its end.

    drain_order   the order in which devices finish their initial data (default: as listed)
    rp_lag        how many main-stream events the return path lags behind (0: at once)
    waits_for_ack False: a non-conforming source that switches over whenever it likes
    switch_after  with waits_for_ack False: switch over after this many devices drained
    """
    src, dst = Source(setup, waits_for_ack=waits_for_ack), Destination(setup)
    checker = SwitchoverChecker(setup)
    events: list[Event] = []
    rp_queue: list[tuple[int, Event]] = []
    step = 0
    ack_immediate = False

    def emit(ev: Event) -> Event:
        nonlocal step
        ev = Event(ev.kind, ev.device, ev.devices, ev.value, offset=step)
        step += 1
        events.append(ev)
        checker.feed(ev)
        return ev

    def deliver_rp(force: bool = False) -> None:
        while rp_queue and (force or rp_queue[0][0] <= step):
            _, ev = rp_queue.pop(0)
            src.receive(emit(ev))

    def send_main(evs: Iterable[Event]) -> None:
        nonlocal ack_immediate
        for ev in evs:
            ev = emit(ev)
            for back in dst.receive(ev):
                if back.kind is Kind.SWITCHOVER_ACK and ev.kind in (Kind.OPEN_RETURN_PATH, Kind.ADVISE):
                    ack_immediate = True
                rp_queue.append((step + rp_lag, back))
            deliver_rp()

    send_main(src.open())
    order = list(drain_order) if drain_order is not None else [d.name for d in setup.devices]
    for i, name in enumerate(order):
        if dst.failed is not None:
            break
        if not waits_for_ack and switch_after is not None and i >= switch_after:
            break
        send_main(src.drain(name))
    deliver_rp(force=True)  # the source polls: whatever the destination sent arrives
    status = "active"
    if dst.failed is not None or src.peer_failed:
        status = "failed"
    elif src.may_switch_over() or not waits_for_ack:
        send_main(src.switch_over())
        deliver_rp(force=True)
        status = "failed" if dst.failed is not None else "completed"
    rp = [e.label() for e in events if e.channel == RP]
    return Outcome(status=status, ack_sent=dst.ack_sent, ack_immediate=ack_immediate, return_path=rp,
                   violations=checker.violations + checker.close(), events=events, destination_error=dst.failed)


def predict(setup: Setup) -> Outcome:
    """What a pair of real QEMUs is expected to do with `setup` (default schedule)."""
    return run(setup)


def ack_reachable(setup: Setup) -> bool:
    """Closed form: the destination will send SWITCHOVER_ACK (given a return path)."""
    if not setup.return_path:
        return False
    if setup.advise:
        return setup.src_switchover_ack
    if not setup.dst_switchover_ack:
        return False
    senders = set(setup.senders)
    return all(n in senders for n in setup.counted)


def real_capabilities(setup: Setup) -> tuple[dict[str, bool], dict[str, bool]]:
    """The QMP capabilities of (source, destination) for a device-less Setup on real QEMU."""
    if setup.devices or setup.advise:
        raise ValueError("real QEMU runs only model device-less setups without the advise")
    src = {"return-path": setup.return_path, "switchover-ack": setup.src_switchover_ack}
    dst = {"return-path": setup.dst_switchover_ack or setup.return_path, "switchover-ack": setup.dst_switchover_ack}
    return src, dst


def describe(setup: Setup) -> str:
    """One line for reports and shrunk examples."""
    devs = ", ".join(f"{d.name}(src_precopy={d.src_precopy}, dst_ack_needed={d.dst_ack_needed})" for d in setup.devices)
    return (f"devices=[{devs}] src_switchover_ack={setup.src_switchover_ack} dst_switchover_ack={setup.dst_switchover_ack} "
            f"return_path={setup.return_path} vm_running={setup.vm_running} advise={setup.advise}")



# --------------------------------------------------------------------------- real streams
def is_vfio_idstr(idstr: str | None) -> bool:
    """VFIO devices register their state as "<pci address>/vfio" (or a bare "vfio")."""
    return bool(idstr) and (idstr == "vfio" or idstr.endswith("/vfio"))


def events_from_records(records: Iterable[Record]) -> list[Event]:
    """The switchover-ack events of a decoded main stream (wireformat records), with their
    byte offsets: OPEN_RETURN_PATH, PING, DEV_INIT_DATA_SENT (a marker in a VFIO device's
    PART section), SWITCHOVER (the SWITCHOVER_START command, or the first END section
    when the source does not send it), EOF (top level)."""
    from wireformat.vfio import DEV_INIT_DATA_SENT, parse_markers

    out: list[Event] = []
    names: dict[int, str] = {}
    part_of: str | None = None  # the VFIO device whose PART section is being read
    switched = False
    for rec in records:
        if rec.depth:
            continue  # postcopy packages are not part of this exchange
        if isinstance(rec, Command):
            if rec.cmd == MigCmd.MIG_CMD_OPEN_RETURN_PATH:
                out.append(Event(Kind.OPEN_RETURN_PATH, offset=rec.offset))
            elif rec.cmd == MigCmd.MIG_CMD_PING and isinstance(rec.args, dict):
                out.append(Event(Kind.PING, value=rec.args.get("value"), offset=rec.offset))
            elif rec.cmd == MigCmd.MIG_CMD_SWITCHOVER_START and not switched:
                switched = True
                out.append(Event(Kind.SWITCHOVER, offset=rec.offset))
        elif isinstance(rec, SectionHeader):
            if rec.is_full and rec.idstr is not None:
                names[rec.section_id] = rec.idstr
            part_of = None
            idstr = names.get(rec.section_id)
            if rec.section_type == SectionType.QEMU_VM_SECTION_PART and is_vfio_idstr(idstr):
                part_of = idstr
            if rec.section_type == SectionType.QEMU_VM_SECTION_END and not switched:
                switched = True
                out.append(Event(Kind.SWITCHOVER, offset=rec.offset))
        elif isinstance(rec, DeviceState) and part_of is not None:
            try:
                markers = parse_markers(rec.data, offset=rec.offset, channel=rec.channel)
            except ValueError:
                continue  # the loader reports a body it cannot frame
            for m in markers:
                if m.marker == DEV_INIT_DATA_SENT:
                    out.append(Event(Kind.INIT_DATA_SENT, device=part_of, offset=m.offset))
        elif isinstance(rec, Eof):
            out.append(Event(Kind.EOF, offset=rec.offset))
    return out


def events_from_return_path(messages: Iterable) -> list[Event]:
    """SWITCHOVER_ACK, PONG and SHUT of decoded return-path messages
    (wireformat.returnpath.RpMessage), with their offsets."""
    kinds = {MigRpMsg.MIG_RP_MSG_SWITCHOVER_ACK: Kind.SWITCHOVER_ACK, MigRpMsg.MIG_RP_MSG_PONG: Kind.PONG,
             MigRpMsg.MIG_RP_MSG_SHUT: Kind.SHUT}
    out = []
    for m in messages:
        try:
            kind = kinds.get(MigRpMsg(m.type))
        except ValueError:
            kind = None
        if kind is not None:
            out.append(Event(kind, value=(m.args or {}).get("value"), offset=m.offset))
    return out


def channel_labels(events: Iterable[Event], channel: str) -> list[str]:
    """The labels of one channel's events, e.g. to compare a prediction with a capture."""
    return [e.label() for e in events if e.channel == channel]
