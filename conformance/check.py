"""Judge one main stream: the reader frames it, the Loader judges it."""

from __future__ import annotations

import lzma
import time
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO, Callable

import zstandard

from wireformat.commands import RELEASED, CommandSet
from wireformat.reader import DecodeError, StreamReader

from .loader import Loader
from .targets import DestinationProfile
from .violations import Severity, Violation


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
) -> Report:
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
    loader = Loader(target, commands=commands, tables=tables, body_checker=body_checker, machine=machine,
                    recovery=recovery, previous=old)
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
        loader.fail(e.code, e.channel, e.offset, e.message, e.section)
    except (OSError, EOFError, lzma.LZMAError, zlib.error, zstandard.ZstdError) as e:
        raise StreamReadError(f"{name}: read error at byte {reader.b.offset()}: {e}") from None
    loader.bytes_seen = max(loader.bytes_seen, reader.b.offset())
    loader.close(reader.b.offset())
    return Report(name, loader.target.version, loader.violations, loader.stats(), time.perf_counter() - t0)
