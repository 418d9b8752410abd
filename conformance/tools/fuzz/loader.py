"""The reference loader as a fuzzing target: the same judgement `migconform check` makes
with the destination's built-in tables, in-process."""

from __future__ import annotations

import os
import tempfile

from conformance.check.destination import destination_tables
from conformance.check.paths import check_files

ACCEPTED, REJECTED = "accepted", "rejected"


class LoaderTarget:
    def __init__(self, version: str, machine: str | None = None):
        self.version, self.machine = version, machine
        self.tables = destination_tables(None, None, version)
        fd, self._path = tempfile.mkstemp(prefix="migconform-fuzz-", suffix=".bin")
        os.close(fd)

    def run(self, data: bytes) -> tuple[str, str | None]:
        """(verdict, first rejecting violation as "code: message")."""
        with open(self._path, "wb") as f:
            f.write(data)
        rep = check_files(self._path, target=self.version, tables=self.tables, machine=self.machine)
        if not rep.rejected:
            return ACCEPTED, None
        v = next(v for v in rep.violations if v.severity.name == "REJECT")
        return REJECTED, f"{v.code}: {v.message}"

    def close(self) -> None:
        try:
            os.unlink(self._path)
        except OSError:
            pass
