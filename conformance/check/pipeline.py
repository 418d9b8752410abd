"""Judge one main stream: the reader frames it, the Loader judges it."""

from __future__ import annotations

import io
import sys
import time
from dataclasses import dataclass, field
from typing import BinaryIO, Callable

from wireformat.commands import RELEASED, CommandSet
from wireformat.errors import DecodeError
from wireformat.reader import StreamReader

from conformance.check.inputs import Prepended
from conformance.rules.loader import Loader
from conformance.rules.profile import DestinationProfile
from conformance.rules.catalogue import Code, Severity, Violation
from conformance.rules.decode_errors import code_of


class StreamReadError(Exception):
    """The input could not be read (I/O or decompression), as opposed to a bad stream."""


@dataclass
class Report:
    source: str
    target: str
    violations: list[Violation]
    stats: dict
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return "violations" if self.violations else "conforms"

    @property
    def rejected(self) -> bool:
        return any(v.severity is Severity.REJECT for v in self.violations)

    def as_json(self) -> dict:
        return {
            "source": self.source,
            "target": self.target,
            "verdict": self.verdict,
            "violations": [v.as_json() for v in self.violations],
            "stats": {**self.stats, "seconds": round(self.seconds, 3)},
        }


def check_stream(
    src: BinaryIO,
    *,
    name: str = "<stream>",
    target: DestinationProfile | str | None = None,
    commands: CommandSet = RELEASED,
    tables=None,
    body_checker: Callable | None = None,
    progress: Callable[[int], None] | None = None,
    machine: str | None = None,
    body_sizer: Callable | None = None,
    recovery: bool = False,
    previous: BinaryIO | None = None,
    source=None,
    return_path: BinaryIO | None = None,
    judge_sides: bool = True,
) -> Report:
    """`source`: the source's settings (rules.settings.Side), when known: its version judges
    the return path, and its one-sided settings are judged against the destination profile."""
    t0 = time.perf_counter()
    old = known = None
    if previous is not None:  # the interrupted main channel a recovery channel resumes
        old = Loader(target, commands=commands)
        old_reader = StreamReader(previous, commands=commands)
        try:
            for rec in old_reader:
                old.feed(rec)
        except DecodeError:
            pass  # it was cut where the connection broke
        known = old_reader.sections
    framed = getattr(body_sizer, "framed", None)
    if framed is not None and body_checker is vmstate_body_check:
        body_checker = _framed_or_checked(framed)
    loader = Loader(target, commands=commands, tables=tables, body_checker=body_checker, machine=machine,
                    recovery=recovery, previous=old, source_version=source.version if source is not None else None)
    reader = StreamReader(src, commands=commands, body_sizer=body_sizer, headerless=recovery, known_sections=known)
    feed = loader.feed
    n = 0
    try:
        for rec in reader:
            feed(rec)
            n += 1
            if progress is not None and not n & 0xFFFF:
                progress(reader.b.offset())
    except DecodeError as e:
        loader.fail(code_of(e), e.channel, e.offset, e.message, e.section)
    except _read_errors() as e:
        raise StreamReadError(f"{name}: read error at byte {reader.b.offset()}: {e}") from None
    loader.bytes_seen = max(loader.bytes_seen, reader.b.offset())
    if return_path is not None:
        _feed_return_path(loader, return_path)
    loader.close(reader.b.offset())
    if source is not None and judge_sides:
        from conformance.rules.dest_channels import judge_pair

        judge_pair(loader.sink, source, loader.target, seen=frozenset(v.code for v in loader.violations))
    return Report(name, loader.target.version, loader.violations, loader.stats(), time.perf_counter() - t0)


def _feed_return_path(loader: Loader, src: BinaryIO) -> None:
    from wireformat.returnpath import RpDecodeError, iter_messages

    head = src.read(1)
    if not head:
        return  # the destination sent nothing back (no return path)
    src = io.BufferedReader(Prepended(src, head))
    try:
        for m in iter_messages(src):
            loader.feed(m)
    except (RpDecodeError, DecodeError) as e:
        loader.sink.emit(Code.RP_MALFORMED, "return-path", getattr(e, "offset", 0), str(e).splitlines()[0])


def check_capture(
    main: BinaryIO,
    channels: list[tuple[str, BinaryIO]],
    *,
    name: str = "<capture>",
    target: DestinationProfile | str | None = None,
    destination_channels: int | None = None,
    **kw,
) -> Report:
    """The main stream and its multifd channels (files in any order), judged together."""
    from wireformat.multifd import MultifdChannelReader

    from conformance.rules.channels import MainSyncInfo, MultifdChecker
    from conformance.rules.dest_channels import destination_channels as expected_channels
    from conformance.rules.profile import profile

    t0 = time.perf_counter()
    dest = target if isinstance(target, DestinationProfile) else profile(target)
    destination_channels = expected_channels(dest, destination_channels)
    rep = check_stream(main, name=name, target=dest, judge_sides=False, **kw)
    recs = rep.stats["records"]
    blocks = {b: info["used_length"] for b, info in rep.stats["ram_blocks"].items() if info.get("used_length")}
    checker = MultifdChecker(MainSyncInfo(recs.get("ram:MULTIFD_FLUSH", 0), recs.get("ram:EOS", 0), blocks),
                             destination_channels=destination_channels,
                             zero_pages_understood=dest.multifd_zero_pages_understood)
    used: set[str] = set()
    file_ids: dict[str, int] = {}
    for label, src in channels:
        head = b""
        while len(head) < 64:  # the init packet names the channel; a pipe may give less per read
            more = src.read(64 - len(head))
            if not more:
                break
            head += more
        cid = int(head[24]) if len(head) == 64 and head[:4] == b"\x11\x22\x33\x44" else None
        chan = f"multifd{cid}" if cid is not None else label
        file_ids[label] = cid if cid is not None else len(file_ids)
        if chan in used:  # two files claim one id: keep them apart to say so
            chan = f"{chan} ({label})"
        used.add(chan)
        if isinstance(src, io.FileIO) and src.seekable():
            src.seek(-len(head), io.SEEK_CUR)  # a plain file is read (mapped) as it is
        else:
            src = Prepended(src, head)
        reader = MultifdChannelReader(src, chan)
        try:
            for rec in reader:
                checker.feed(rec)
        except DecodeError as e:
            checker.sink.emit(code_of(e), e.channel, e.offset, f"{e.message}: the destination hangs waiting for this channel")
        except _read_errors() as e:
            raise StreamReadError(f"{label}: read error: {e}") from None
    checker.close()
    if kw.get("source") is not None:  # after the channels: what they showed is not said twice
        from conformance.rules.dest_channels import judge_pair

        judge_pair(checker.sink, kw["source"], dest, seen=frozenset(v.code for v in rep.violations + checker.violations))
    rep.violations = rep.violations + checker.violations
    rep.stats["violations_dropped"] += checker.sink.dropped
    rep.stats["multifd"] = {
        "channels": {c.name: {"packets": c.packets, "syncs": c.syncs} for c in checker.channels.values()},
        "sync_mode": checker.main.mode,
        "sync_points": checker.main.sync_points,
        "pages": dict(checker.pages),
        "file_ids": file_ids,
    }
    rep.seconds = time.perf_counter() - t0
    return rep


def _read_errors() -> tuple[type[BaseException], ...]:
    """What reading a stream raises: I/O errors, and the errors of the decompressors —
    only of those imported, as only an opened compressed stream (conformance.check.inputs
    imports its decompressor then) can raise them; start-up does not import the others."""
    errors: list[type[BaseException]] = [OSError, EOFError]
    for module, name in (("lzma", "LZMAError"), ("zlib", "error"), ("zstandard", "ZstdError")):  # bz2: OSError
        m = sys.modules.get(module)
        if m is not None:
            errors.append(getattr(m, name))
    return tuple(errors)


def ram_model_check(main: BinaryIO, channels: list[BinaryIO], *, mode: str) -> tuple[list[Violation], dict]:
    """Replay a multifd capture through the reference RAM model (conformance.rules.ram_model) in a
    schedule the protocol permits — round by round: the main stream up to its next sync
    point, then each channel up to its next SYNC — so that memory holds one round at a time.
    Pages are kept as digests. Reports page races (one page, one round, two lanes, two
    contents), pages that land stale, and sync deadlocks."""
    from wireformat.multifd import MultifdChannelReader

    from conformance.rules.ram_model import ChannelSync, RamModel, channel_events, is_sync_point, main_events

    model = RamModel(len(channels), mode, hash_pages=True)
    lanes = [main_events(StreamReader(main))] + [channel_events(MultifdChannelReader(c, f"multifd{i}"))
                                                   for i, c in enumerate(channels)]
    live = list(range(len(lanes)))
    try:
        while live:
            for i in list(live):
                for ev in lanes[i]:
                    model.feed(ev)
                    if isinstance(ev, ChannelSync) or (i == 0 and is_sync_point(ev, mode)):
                        break
                else:
                    live.remove(i)
    except DecodeError as e:  # framing faults are check's to report; the model stops there
        model.close()
        return model.violations, {**model.stats(), "stopped": str(e)}
    model.close()
    return model.violations, model.stats()


def vmstate_body_check(desc: dict, data: bytes, budget=None) -> str | None:
    """The Loader's body checker: a FULL body must be exactly what the stream's own VMSD
    description (its VMDESCRIPTION trailer) says; the problem, or None. `budget`: the
    decoded-element budget the stream's bodies share."""
    from wireformat import vmstate

    try:
        decoded = vmstate.decode_body(desc, data, budget=budget)
    except vmstate.VmstateBudgetError:
        raise  # the description's fault, not this body's: the loader says so once
    except vmstate.VmstateDecodeError as e:
        return f"body does not decode with the stream's own VMSD description: {e}"
    except (KeyError, TypeError, ValueError) as e:
        return f"the stream's VMSD description cannot be applied: {e}"
    if decoded.consumed != len(data):
        return f"VMSD description accounts for {decoded.consumed} of {len(data)} body bytes"
    return None


def _framed_or_checked(framed: dict) -> Callable:
    """vmstate_body_check, but a body the trailer's sizer already decoded with an equal
    description to exactly its length passes without a second decode."""
    import hashlib

    def check(desc: dict, data, budget=None) -> str | None:
        if isinstance(desc, dict):
            seen = framed.get((desc.get("name"), desc.get("instance_id", 0)))
            if seen:
                digest = hashlib.blake2b(data, digest_size=16).digest()
                if any(h == digest and d == desc for d, h in seen):
                    return None
        return vmstate_body_check(desc, data, budget)

    return check


def trailer_body_sizer(path: str):
    """Frame device bodies by the stream's own trailer, read first from a plain file (None
    for pipes, compressed files, or no usable trailer)."""
    from wireformat.reader import vmdescription_body_sizer
    from wireformat.vmstate import VmstateDecodeError, parse_vmdescription

    from conformance.check.inputs import read_vmdescription

    raw = read_vmdescription(str(path))
    if raw is None:
        return None
    try:  # a malformed trailer is the loader's to report (vmdescription-malformed); framing goes on without it
        devices = parse_vmdescription(raw).devices
    except VmstateDecodeError:
        return None
    framed: dict = {}
    sizer = vmdescription_body_sizer(devices, framed)
    sizer.framed = framed  # type: ignore[attr-defined]  # check_stream skips a second decode of these
    return sizer
