"""Channels and the return path judged per destination (and per source, for what the source
must understand): how many multifd channels the destination waits for, whether it applies a
packet's zero-page list, which return-path message types the reading side knows, and the
one-sided settings of rules/settings.py given both sides' profiles.

Sans-IO: findings go to a ViolationSink; the facts come from conformance/versions.py.
"""

from __future__ import annotations

from conformance.rules.catalogue import Code
from conformance.rules.profile import DestinationProfile
from conformance.rules.settings import Side, judge_sides
from conformance.rules.sink import ViolationSink
from conformance.versions import facts

DEFAULT_MULTIFD_CHANNELS = 2  # QEMU's default multifd-channels (7.2 and 10.0)


def destination_channels(dest: DestinationProfile, given: int | None = None) -> int | None:
    """The multifd channels the destination waits for: `given` (--dest-channels), else its
    profile's multifd-channels; None when the profile says nothing of multifd."""
    if given is not None:
        return given
    if "multifd-channels" in dest.parameters:
        return int(dest.parameters["multifd-channels"])
    if dest.capabilities.get("multifd"):
        return DEFAULT_MULTIFD_CHANNELS
    return None


def rp_type_known(version: str | None, msg_type: int) -> bool:
    """Whether a source of `version` knows return-path message `msg_type` (None: any version)."""
    return version is None or 0 < msg_type < facts(version).rp_msg_max


def judge_pair(sink: ViolationSink, source: Side, dest: DestinationProfile, *, stream_judged: bool = True,
               seen: frozenset = frozenset()) -> None:
    """The one-sided settings of the two sides (rules/settings.py), each said once: a code
    the stream's own judgement already reported (`seen`) is not said again."""
    for f in judge_sides(source, dest.side(), stream_judged=stream_judged):
        code = f.effect.code or Code.ONE_SIDED_SETTING
        if code not in seen:
            sink.emit(code, "main", 0, f.message)
