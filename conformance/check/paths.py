"""Judge what `migconform check` is pointed at: one main stream, or a main stream and the
multifd channels of the same migration (a capture)."""

from __future__ import annotations

import os
from typing import Callable, Sequence

from wireformat.commands import RELEASED, CommandSet

from conformance.check.inputs import open_stream
from conformance.check.pipeline import (
    Report,
    check_capture,
    check_stream,
    trailer_body_sizer,
    vmstate_body_check,
)
from conformance.rules.profile import DestinationProfile


def check_files(
    main: str,
    channels: Sequence[str] = (),
    *,
    target: DestinationProfile | str | None = None,
    commands: CommandSet = RELEASED,
    tables=None,
    machine: str | None = None,
    recovery: str | None = None,
    destination_channels: int | None = None,
    ram_model: bool = False,
    progress: Callable[[int, int | None], None] | None = None,
    source=None,
    return_path: str | None = None,
) -> Report:
    """The Report on `main` (a path, '-' or tcp:HOST:PORT) and its multifd `channels` (paths,
    any order). recovery: `main` is the new main channel of a postcopy recovery ('' when the
    interrupted one is not at hand, else its path). ram_model: also replay the channels through
    the reference RAM model. progress(offset, total or None) while a lone main stream is read."""
    kw = dict(target=target, commands=commands, tables=tables, body_checker=vmstate_body_check, machine=machine,
              body_sizer=trailer_body_sizer(main), source=source,
              return_path=open_stream(return_path)[0] if return_path else None)
    if channels:
        return _check_channels(main, list(channels), destination_channels, ram_model, kw)
    previous = open_stream(recovery)[0] if recovery else None
    src, name = open_stream(main)
    compressed = name.endswith(")")  # "path (gzip)": the file's size says nothing of the stream's
    total = os.path.getsize(main) if os.path.isfile(main) and not compressed else None
    tick = None if progress is None else (lambda offset: progress(offset, total))
    return check_stream(src, name=name, progress=tick, recovery=recovery is not None, previous=previous, **kw)


def _check_channels(main: str, paths: list[str], destination_channels: int | None, ram_model: bool, kw: dict) -> Report:
    src, name = open_stream(main)
    channels = [(os.path.basename(p), open_stream(p)[0]) for p in paths]
    return check_capture(src, channels, name=name, destination_channels=destination_channels, ram_model=ram_model, **kw)
