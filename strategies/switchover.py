"""Hypothesis strategies for the switchover-ack model (conformance.rules.switchover).

Devices are named vfio0, vfio1, … so that shrunk examples read the same every time; the
booleans shrink to False, so a minimal failing device keeps only the True it needs.
"""

from __future__ import annotations

from hypothesis import strategies as st

from conformance.rules.switchover import Device, Setup

MAX_DEVICES = 4


def device_flags(agree: bool | None = None) -> st.SearchStrategy[tuple[bool, bool]]:
    """(src_precopy, dst_ack_needed). agree=True: the two ends see the device alike."""
    if agree:
        return st.booleans().map(lambda b: (b, b))
    return st.tuples(st.booleans(), st.booleans())


def devices(*, agree: bool | None = None, max_size: int = MAX_DEVICES) -> st.SearchStrategy[tuple[Device, ...]]:
    return st.lists(device_flags(agree), max_size=max_size).map(
        lambda flags: tuple(Device(f"vfio{i}", src_precopy=s, dst_ack_needed=d) for i, (s, d) in enumerate(flags)))


@st.composite
def setups(draw, *, agree: bool | None = None, caps: str = "any", advise: bool | None = False,
           vm_running: bool | None = None, max_devices: int = MAX_DEVICES) -> Setup:
    """Setups QEMU accepts (switchover-ack only with return-path).

    caps: "any" (each end on or off), "both" (on at both ends), "same" (equal at both ends)
    advise / vm_running: a fixed value, or None to draw it
    """
    devs = draw(devices(agree=agree, max_size=max_devices))
    if caps == "both":
        src_ack = dst_ack = True
    elif caps == "same":
        src_ack = dst_ack = draw(st.booleans())
    elif caps == "any":
        src_ack, dst_ack = draw(st.booleans()), draw(st.booleans())
    else:
        raise ValueError(f"caps must be any, both or same, not {caps!r}")
    return_path = True if src_ack else draw(st.booleans())
    running = draw(st.booleans()) if vm_running is None else vm_running
    adv = draw(st.booleans()) if advise is None else advise
    return Setup(devices=devs, src_switchover_ack=src_ack, dst_switchover_ack=dst_ack, return_path=return_path,
                 vm_running=running, advise=adv)


@st.composite
def schedules(draw, setup: Setup) -> tuple[list[str], int]:
    """(the order in which devices finish their initial data, return-path lag in events)."""
    order = draw(st.permutations([d.name for d in setup.devices]))
    return list(order), draw(st.integers(0, 3))
