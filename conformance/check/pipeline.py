"""Judge a migration: the readers frame the bytes, the models judge the records.

check_stream: one main stream (wireformat.reader.StreamReader -> rules.loader.Loader), with
its return path when captured (-> rules.returnpath.ReturnPathModel). check_capture: the main
stream and its multifd channels (-> rules.channels.MultifdChecker), and with ram_model the
reference RAM model too (rules.ram_model), every file decoded once."""

from __future__ import annotations

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
from conformance.rules.sync import SyncSummary



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
    sync: SyncSummary | None = None  # the main stream's multifd sync points and RAM blocks

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
    tap: "MainTap | None" = None,
) -> Report:
    """`source`: the source's settings (rules.settings.Side), when known: its version judges
    the return path, and its one-sided settings are judged against the destination profile.
    return_path: the messages the destination sent back, judged as the source judges them
    (rules.returnpath) after the main stream. tap: also handed every record of the main
    stream (and the DecodeError that ends it), for a model that reads the same records
    (check_capture's RAM model)."""
    t0 = time.perf_counter()
    old = known = None
    page_size_reader = None
    if previous is not None:  # the interrupted main channel a recovery channel resumes
        old = Loader(target, commands=commands)
        old_reader = page_size_reader = StreamReader(previous, commands=commands)
        try:
            for rec in old_reader:
                old.feed(rec)
        except DecodeError:
            pass  # it was cut where the connection broke
        # each resumes its own state: the new reader the old reader's section table (framing),
        # the new Loader the old Loader's bindings (previous=old, judgement)
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
        if tap is None:
            for rec in reader:
                feed(rec)
                n += 1
                if progress is not None and not n & 0xFFFF:
                    progress(reader.b.offset())
        else:
            also = tap.feed
            for rec in reader:
                feed(rec)
                also(rec)
                n += 1
                if progress is not None and not n & 0xFFFF:
                    progress(reader.b.offset())
    except DecodeError as e:
        loader.fail(code_of(e), e.channel, e.offset, e.message, e.section)
        if tap is not None:
            tap.stop(e)
    except _read_errors() as e:
        raise StreamReadError(f"{name}: read error at byte {reader.b.offset()}: {e}") from None
    loader.bytes_seen = max(loader.bytes_seen, reader.b.offset())
    model = None
    if return_path is not None:  # fed before the end of the main stream is judged, as main did
        model = _return_path_model(loader, page_size_reader or reader, return_path, name, source)
    fed = len(model.violations) if model is not None else 0
    before_close = len(loader.violations)
    loader.close(reader.b.offset())
    after_close = len(loader.violations)
    if model is not None:
        model.close()  # PINGs left unanswered: said after the end of the main stream
    if source is not None and judge_sides:
        from conformance.rules.dest_channels import judge_pair

        seen = loader.violations + (model.violations if model is not None else [])
        judge_pair(loader.sink, source, loader.target, seen=frozenset(v.code for v in seen))
    violations, stats = loader.violations, loader.stats()
    stats["return_path"] = None
    if model is not None:
        lv, mv = loader.violations, model.violations
        violations = lv[:before_close] + mv[:fed] + lv[before_close:after_close] + mv[fed:] + lv[after_close:]
        stats["return_path"] = model.stats()
        stats["violations_dropped"] += model.sink.dropped
    return Report(name, loader.target.version, violations, stats, time.perf_counter() - t0, sync=loader.sync_summary())


def _return_path_model(loader: Loader, reader: StreamReader, src: BinaryIO, name: str, source):
    """A ReturnPathModel fed the captured return path (not closed): judged with the PINGs and
    RAM blocks the Loader saw and the page size the reader framed RAM by (a recovery
    channel's: the interrupted channel's reader, which read the configuration)."""
    from wireformat.returnpath import RpDecodeError, iter_messages

    from conformance.rules.returnpath import ReturnPathModel

    model = ReturnPathModel(loader.target.version, pings=loader.pings, blocks=loader.blocks,
                            page_size=reader.ram_params["page_size"],
                            source_version=source.version if source is not None else None)
    try:
        for m in iter_messages(src):
            model.feed(m)
    except (RpDecodeError, DecodeError) as e:  # the source reads no further either
        model.fail(Code.RP_MALFORMED, getattr(e, "offset", 0), str(e).splitlines()[0])
    except _read_errors() as e:
        raise StreamReadError(f"{name}: return path: read error: {e}") from None
    return model


def check_capture(
    main: BinaryIO,
    channels: list[tuple[str, BinaryIO]],
    *,
    name: str = "<capture>",
    target: DestinationProfile | str | None = None,
    destination_channels: int | None = None,
    ram_model: bool = False,
    **kw,
) -> Report:
    """The main stream and its multifd channels (files in any order), judged together; with
    `ram_model`, also replayed through the reference RAM model (ram_model_check) in the same
    pass: each file is decoded once, its records handed to every model that reads them."""
    from conformance.rules.channels import MultifdChecker
    from conformance.rules.dest_channels import destination_channels as expected_channels
    from conformance.rules.profile import profile

    t0 = time.perf_counter()
    dest = target if isinstance(target, DestinationProfile) else profile(target)
    destination_channels = expected_channels(dest, destination_channels)
    tap = MainTap() if ram_model else None
    rep = check_stream(main, name=name, target=dest, judge_sides=False, tap=tap, **kw)
    checker = MultifdChecker(rep.sync, destination_channels=destination_channels,
                             zero_pages_understood=dest.multifd_zero_pages_understood)
    lanes = _open_channels(channels)
    if ram_model:
        found, stats = _channels_and_ram_model(checker, lanes, tap, rep.sync.mode)
    else:
        for lane in lanes:
            _drain(lane, checker)
    checker.close()
    if kw.get("source") is not None:  # after the channels: what they showed is not said twice
        from conformance.rules.dest_channels import judge_pair

        judge_pair(checker.sink, kw["source"], dest, seen=frozenset(v.code for v in rep.violations + checker.violations))
    rep.violations = rep.violations + checker.violations
    rep.stats["violations_dropped"] += checker.sink.dropped
    rep.stats["multifd"] = {
        "channels": {c.name: {"packets": c.packets, "syncs": c.syncs} for c in checker.channels.values()},
        "sync_mode": rep.sync.mode,
        "sync_points": rep.sync.sync_points,
        "pages": dict(checker.pages),
        "file_ids": {lane.label: lane.file_id for lane in lanes},
    }
    if ram_model:
        rep.violations = rep.violations + found
        rep.stats["ram_model"] = stats
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


class MainTap:
    """The main stream's RAM events, kept (page contents as digests) while check_stream reads
    it, for the RAM model to replay round by round against the channels. Bounded: past
    MAX_EVENTS the stream is too big to hold and the RAM model is not run."""

    MAX_EVENTS = 1 << 22  # ~16 GiB of guest RAM sent on the main stream

    def __init__(self):
        from conformance.rules.ram_model import MainEvents

        self.events: list = []
        self.error: DecodeError | None = None  # where the main stream stopped being framed
        self.overflow = False
        self._of = MainEvents(digest=True)

    def feed(self, rec) -> None:
        if self.overflow:
            return
        self.events.extend(self._of(rec))
        if len(self.events) > self.MAX_EVENTS:
            self.overflow, self.events = True, []

    def stop(self, error: DecodeError) -> None:
        self.error = error

    def replay(self):
        """The kept events, then the error that ended the stream (as reading it raised it)."""
        yield from self.events
        if self.error is not None:
            raise self.error


@dataclass
class _Lane:
    """One multifd channel file: its label, the id its initial packet names, the name its
    records carry, and the file (its first bytes already read, to learn the id)."""

    label: str
    file_id: int
    channel: str
    src: BinaryIO
    head: bytes
    ended: bool = False

    def records(self, checker):
        """The channel's records, each fed to the multifd checker first; a framing error is
        the checker's to report (the channel's destination thread hangs there). The reader
        (and its buffer) exists only while the channel is read."""
        from wireformat.multifd import MultifdChannelReader

        feed = checker.feed
        src = self.src
        if self.head and _rewinds(src, len(self.head)):
            pass  # a plain file, back at its start: the reader maps it instead of copying it in
        else:
            src = Prepended(src, self.head)
        try:
            for rec in MultifdChannelReader(src, self.channel):
                feed(rec)
                yield rec
        except DecodeError as e:
            checker.sink.emit(code_of(e), e.channel, e.offset, f"{e.message}: the destination hangs waiting for this channel")
            self.ended = True
            raise _ChannelStopped(e) from None
        except _read_errors() as e:
            raise StreamReadError(f"{self.label}: read error: {e}") from None
        self.ended = True


def _rewinds(src: BinaryIO, n: int) -> bool:
    """Seek a plain file n bytes back (the head read to learn the channel id); False for
    anything else (pipes, FIFOs, decompressors), whose head is put back in front instead."""
    import io
    import stat
    import os

    try:
        if not isinstance(src, io.FileIO) or not stat.S_ISREG(os.fstat(src.fileno()).st_mode):
            return False
        src.seek(-n, 1)
        return True
    except (OSError, ValueError, AttributeError):
        return False


class _ChannelStopped(Exception):
    def __init__(self, error: DecodeError):
        self.error = error


def _open_channels(channels: list[tuple[str, BinaryIO]]) -> list[_Lane]:
    used: set[str] = set()
    lanes: list[_Lane] = []
    for label, src in channels:
        head = b""
        while len(head) < 64:  # the init packet names the channel; a pipe may give less per read
            try:
                more = src.read(64 - len(head))
            except _read_errors() as e:
                raise StreamReadError(f"{label}: read error: {e}") from None
            if not more:
                break
            head += more
        cid = int(head[24]) if len(head) == 64 and head[:4] == b"\x11\x22\x33\x44" else None
        chan = f"multifd{cid}" if cid is not None else label
        if chan in used:  # two files claim one id: keep them apart to say so
            chan = f"{chan} ({label})"
        used.add(chan)
        lanes.append(_Lane(label, cid if cid is not None else len(lanes), chan, src, head))
    return lanes


def _drain(lane: _Lane, checker) -> None:
    try:
        for _ in lane.records(checker):
            pass
    except _ChannelStopped:
        pass


def _channels_and_ram_model(checker, lanes: list[_Lane], tap: MainTap, mode: str) -> tuple[list[Violation], dict]:
    """ram_model_check's schedule over records read once: the main stream's kept events up
    to its next sync point, then each channel (in the order of their ids) up to its next
    SYNC, its records fed to the multifd checker on the way. The checker's findings are put
    back in the order of the files, as reading them one after the other gives them."""
    from conformance.rules.ram_model import ChannelSync, RamModel, channel_events, is_sync_point

    if tap.overflow:
        for lane in lanes:
            _drain(lane, checker)
        return [], {"stopped": f"the main stream holds more than {MainTap.MAX_EVENTS} RAM events: not replayed"}
    start = len(checker.sink)
    index = {id(lane): i for i, lane in enumerate(lanes)}
    from_file: list[int] = []  # for each checker finding, the file it came from
    ordered = sorted(lanes, key=lambda lane: lane.file_id)

    def counted(lane: _Lane):
        sink, mine = checker.sink, index[id(lane)]
        try:
            for rec in lane.records(checker):
                from_file.extend([mine] * (len(sink) - start - len(from_file)))
                yield rec
        finally:
            from_file.extend([mine] * (len(sink) - start - len(from_file)))

    model = RamModel(len(lanes), mode, hash_pages=True)
    sources = [None] + [counted(lane) for lane in ordered]
    events = [tap.replay()] + [channel_events(src) for src in sources[1:]]
    live = list(range(len(events)))
    stopped: str | None = None
    try:
        while live:
            for i in list(live):
                for ev in events[i]:
                    model.feed(ev)
                    if isinstance(ev, ChannelSync) or (i == 0 and is_sync_point(ev, mode)):
                        break
                else:
                    live.remove(i)
    except DecodeError as e:  # the main stream's framing fault: check's to report; the model stops there
        stopped = str(e)
    except _ChannelStopped as e:
        stopped = str(e.error)
    if stopped is not None:
        owner = {id(lane): k for k, lane in enumerate(ordered, 1)}
        for lane in ordered:  # the checker still reads every channel to its end
            if not lane.ended:
                try:
                    for _ in sources[owner[id(lane)]]:
                        pass
                except _ChannelStopped:
                    pass
    checker.order_channels([lane.channel for lane in lanes])
    found = checker.sink.since(start)
    if found:  # stable: within one file, the order it was read in
        order = sorted(range(len(found)), key=lambda k: from_file[k] if k < len(from_file) else len(lanes))
        checker.sink.violations[start:] = [found[k] for k in order]
    model.close()
    stats = model.stats()
    if stopped is not None:
        stats["stopped"] = stopped
    return model.violations, stats


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
