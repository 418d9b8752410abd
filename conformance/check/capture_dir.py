"""The capture directory: one migration's channels as files, and how to find them.

A capture directory holds `manifest.json` naming the main channel and the multifd channels
({"main": "main.bin", "channels": ["multifd0.bin", ...], ...} as `migconform capture` writes
it, with what was run and what came out), or, made by hand, exactly one `main*` file and
any number of `multifd*` files. `migconform check DIR`, `migconform replay DIR` and the
pytest plugin's `--captures` read it through this module; `migconform capture` writes it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

from conformance.check.inputs import InputError

# manifest.FILE (tests/test_startup.py holds them equal): the schema module is imported only
# for a directory that has one, so checking a file does not pay for it
MANIFEST = "manifest.json"

# Files next to streams that are not streams (notes, reports, scripts).
NOT_STREAMS = (".json", ".md", ".txt", ".log", ".py", ".sh")


class LayoutError(InputError):
    """A directory that is not a capture directory (one line)."""


def write_manifest(directory: Path | str, manifest: dict[str, Any]) -> Path:
    path = Path(directory) / MANIFEST
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def is_capture_dir(path: Path) -> bool:
    return (path / MANIFEST).is_file() or len(_files(path, "main*")) == 1


def capture_files(path: Path | str) -> tuple[Path, list[Path]]:
    """(main stream, multifd channel files) of a capture directory; a file is its own main
    stream, without channels. LayoutError for a directory that is not a capture."""
    path = Path(path)
    if not path.is_dir():
        return path, []
    if (path / MANIFEST).is_file():
        # read as untrusted data: checked against the schema, files confined to the directory
        from conformance.check import manifest as mf

        try:
            m = mf.load(path)
            return mf.resolve(path, m.main), [mf.resolve(path, c) for c in m.channels]
        except mf.ManifestError as e:
            raise LayoutError(f"not a capture manifest: {e}") from None
    mains = _files(path, "main*")
    if len(mains) != 1:
        raise LayoutError(f"{path}: a capture directory needs {MANIFEST} or exactly one main* file")
    return mains[0], _files(path, "multifd*")


def stream_files(path: str, channels: Sequence[str] = ()) -> tuple[str, list[str]]:
    """(main, channels) that `check PATH --channel ...` names: PATH as given when it is not a
    directory (a file, '-', tcp:HOST:PORT), else the capture directory's files; the
    `channels` named besides come last."""
    if not os.path.isdir(path):
        return path, list(channels)
    main, found = capture_files(path)
    return str(main), [str(p) for p in found] + list(channels)


def find_captures(root: Path) -> Iterator[Path]:
    """Stream files and capture directories under `root`, sorted (hidden entries and notes
    such as *.json/*.md/*.txt left out). `root` itself may be a file or a capture directory."""
    if root.is_file() or is_capture_dir(root):
        yield root
        return
    for p in sorted(root.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir():
            yield from find_captures(p)
        elif p.is_file() and not p.name.endswith(NOT_STREAMS):
            yield p


def _files(path: Path, pattern: str) -> list[Path]:
    return sorted(p for p in path.glob(pattern) if p.is_file())
