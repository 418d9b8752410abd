"""Findings on disk: one stream and one JSON per distinct signature, each written to a
temporary name and renamed, so an interrupted campaign leaves whole files or none."""

from __future__ import annotations

import json
import os
from pathlib import Path

from conformance.tools.fuzz.signature import short_id


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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

    def save(self, sig: str, stream: bytes, meta: dict) -> tuple[Path, bool]:
        """Keep the smaller reproducer (fewer edits, then fewer bytes) of one signature.
        Returns (json path, whether this one was written)."""
        jpath = self.path(sig)
        spath = jpath.with_suffix(".bin")
        size = (len(meta.get("mutation", [])), len(stream))
        try:
            old = json.loads(jpath.read_text())
            if (len(old.get("mutation", [])), old.get("stream_size", 0)) <= size:
                return jpath, False
        except (OSError, ValueError):
            pass
        write_atomic(spath, stream)  # the stream first: a JSON always has its stream
        meta = {**meta, "signature": sig, "stream": spath.name, "stream_size": len(stream)}
        write_atomic(jpath, (json.dumps(meta, indent=2) + "\n").encode())
        return jpath, True
