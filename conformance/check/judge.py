"""The one judge: what `migconform check` decides about a stream, a capture directory or a
main stream and its channels, for a destination profile. `check`, the pytest plugin
(`--captures`), the matrix's checker column, `replay`'s prediction, `vmstate-diff
--stream-a/--stream-b` and `demo` all call judge_path, so that a stream one of them rejects
none of them passes (tests/test_same_judge.py holds them to it).

What it decides, as `check` does:
* the destination's tables: its -dump-vmstate (`vmstate`) and/or a stream it saved
  (`reference`); else, unless `builtin` is off, what every destination of the profile's
  version has (shipped): section names, versions and instance ids, RAM blocks, and the
  destination's own VMSD layouts its device bodies are read by;
* device bodies checked against the stream's own VMDESCRIPTION, and framed by it when
  the file has one (machine types without section footers need it);
* the profile's machine type as the destination's; the value rules of its version.
"""

from __future__ import annotations

from typing import Callable, Sequence

from wireformat.commands import RELEASED, CommandSet

from conformance.check.pipeline import Report
from conformance.rules.profile import DestinationProfile


def judge_path(
    path: str,
    dest: DestinationProfile | str | None = None,
    *,
    channels: Sequence[str] = (),
    source=None,
    vmstate: str | None = None,
    reference: str | None = None,
    builtin: bool = True,
    commands: CommandSet = RELEASED,
    recovery: str | None = None,
    destination_channels: int | None = None,
    ram_model: bool = False,
    progress: Callable[[int, int | None], None] | None = None,
    return_path: str | None = None,
) -> Report:
    """The Report `migconform check PATH` gives for the destination `dest` (a profile, a
    version, or None: the newest modelled version, without built-in tables — an unmodelled
    destination). `path`: a stream file, '-', tcp:HOST:PORT or a capture directory;
    `channels`: multifd channel files besides. `vmstate`: the destination's -dump-vmstate;
    `reference`: a stream it saved (check's --vmstate, --reference). `source`: the source's settings
    (rules.settings.Side) when known. InputError / StreamReadError (one line) for what
    cannot be read."""
    from conformance.check.capture_dir import stream_files
    from conformance.check.destination import destination_tables
    from conformance.check.paths import check_files
    from conformance.rules.profile import profile

    prof = dest if isinstance(dest, DestinationProfile) or dest is None else profile(dest)
    main, chans = stream_files(str(path), [str(c) for c in channels])
    tables = destination_tables(vmstate, reference, prof.version if prof is not None else None, builtin)
    return check_files(main, chans, target=prof, commands=commands, tables=tables,
                       machine=prof.machine if prof is not None else None, recovery=recovery,
                       destination_channels=destination_channels, ram_model=ram_model, progress=progress,
                       source=source, return_path=return_path)
