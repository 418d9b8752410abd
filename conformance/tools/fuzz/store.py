"""Findings on disk: one stream (or, for a multifd campaign, one capture directory) and one
JSON per distinct signature, each written to a temporary name and renamed, so an interrupted
campaign leaves whole files or none."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from conformance.tools.fuzz.signature import short_id


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_directory_atomic(path: Path, files: dict[str, bytes]) -> None:
    """A directory of files, whole or not at all: written aside, then renamed into place (an
    older one is moved away first and removed after)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name, data in files.items():
        write_atomic(tmp / name, data)
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


class FindingStore:
    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, sig: str) -> Path:
        return self.root / f"finding-{short_id(sig)}.json"

    def signatures(self) -> dict[str, dict]:
        out = {}
        for p in sorted(self.root.glob("finding-*.json")):
            try:
                meta = json.loads(p.read_text())
                out[meta["signature"]] = meta
            except (OSError, ValueError, KeyError, TypeError):
                continue  # not one of ours, or from an older layout: ignored, not fatal
        return out

    def save(self, sig: str, stream: bytes | dict[str, bytes], meta: dict) -> tuple[Path, bool]:
        """Keep the smaller reproducer (fewer edits, then fewer bytes) of one signature.
        `stream`: bytes, or a capture's files by name (saved as a capture directory, which
        `migconform check` and `migconform replay` read as they are).
        Returns (json path, whether this one was written)."""
        jpath = self.path(sig)
        files = stream if isinstance(stream, dict) else None
        spath = jpath.with_suffix(".d" if files is not None else ".bin")
        nbytes = sum(len(v) for v in files.values()) if files is not None else len(stream)
        size = (len(meta.get("mutation", [])), nbytes)
        try:
            old = json.loads(jpath.read_text())
            if (len(old.get("mutation", [])), old.get("stream_size", 0)) <= size:
                return jpath, False
        except (OSError, ValueError):
            pass
        if files is not None:  # the capture first: a JSON always has its stream
            write_directory_atomic(spath, files)
        else:
            write_atomic(spath, stream)
        meta = {**meta, "signature": sig, "stream": spath.name, "stream_size": nbytes}
        write_atomic(jpath, (json.dumps(meta, indent=2) + "\n").encode())
        return jpath, True
