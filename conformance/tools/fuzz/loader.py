"""The reference loader as a fuzzing target: the same judgement `migconform check` makes
with the destination's built-in tables, in-process."""

from __future__ import annotations

import os
import shutil
import tempfile

from conformance.check.destination import destination_tables
from conformance.check.capture_dir import stream_files
from conformance.check.paths import check_files

ACCEPTED, REJECTED = "accepted", "rejected"


class LoaderTarget:
    """channels: the destination's multifd-channels, for a multifd capture (run() is given the
    capture's files, {"main.bin": …, "multifd0.bin": …}, judged as `check DIR` judges one)."""

    def __init__(self, version: str, machine: str | None = None, channels: int | None = None):
        self.version, self.machine, self.channels = version, machine, channels
        self.tables = destination_tables(None, None, version)
        self._dir = tempfile.mkdtemp(prefix="migconform-fuzz-")
        self._path = os.path.join(self._dir, "main.bin")

    def run(self, data: bytes | dict[str, bytes]) -> tuple[str, str | None]:
        """(verdict, first rejecting violation as "code: message")."""
        files = data if isinstance(data, dict) else {"main.bin": data}
        for name, content in files.items():
            with open(os.path.join(self._dir, name), "wb") as f:
                f.write(content)
        main, chans = stream_files(self._dir) if isinstance(data, dict) else (self._path, [])
        rep = check_files(main, chans, target=self.version, tables=self.tables, machine=self.machine,
                          destination_channels=self.channels)
        if not rep.rejected:
            return ACCEPTED, None
        v = next(v for v in rep.violations if v.severity.name == "REJECT")
        return REJECTED, f"{v.code}: {v.message}"

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)
