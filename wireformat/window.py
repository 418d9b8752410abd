"""The fixed read window both stream readers (main stream, multifd channels) use.

Two backings behind one interface (`buf`, `mv`, `pos`, `end`, `base`, `eof`, `fill`):

* streaming — a bytearray of fixed size over any binary file object (pipes, sockets,
  decompressors): records that fit are served as memoryviews into the window (valid until
  the window slides), longer ones are copied out in chunks;
* mapped — a regular file (an `io.FileIO`, or a `BufferedReader` over one) is read through
  a read-only memory map of at most `size` bytes (or the one record asked for) that slides
  along the file: nothing is copied into the process, the kernel reads ahead
  (MADV_SEQUENTIAL), and a map the reader has moved past is unmapped as soon as no record
  refers to it any more, so resident memory stays bounded by the window whatever the
  file's size. A file that grows while it is read is followed; one truncated under the
  reader is not supported (the kernel signals SIGBUS on the vanished pages).

Memory stays bounded either way: `fill(n)` with n above the window size is refused.
"""

from __future__ import annotations

import io
import mmap
import os
import stat
from typing import BinaryIO

from .errors import Truncated

_GRAIN = mmap.ALLOCATIONGRANULARITY
MAP_FILES = True  # read regular files through a memory map (tests turn it off to compare)
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # map the window in one go instead of a fault per 64 KiB


def _regular_fd(src) -> tuple[int, int] | None:
    """(fd, current offset) when src reads a regular file directly, else None."""
    if isinstance(src, io.BufferedReader):
        if not isinstance(src.raw, io.FileIO):
            return None
    elif not isinstance(src, io.FileIO):
        return None
    try:
        fd = src.fileno()
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size == 0:  # empty: maybe a /proc file that reads
            return None
        return fd, src.tell()
    except (OSError, ValueError):
        return None


class Window:
    """A fixed window over the stream; `pos` is an index into `buf`/`mv`."""

    def __init__(self, src: BinaryIO, size: int):
        self.src = src
        self.size = size
        self.pos = 0
        self.end = 0
        self.base = 0  # stream offset of buf[0]
        self.eof = False
        regular = _regular_fd(src) if MAP_FILES else None
        if regular is not None:
            self._fd, self._start = regular
            self._file_size = os.fstat(self._fd).st_size
            self.buf = b""
            self.mv = memoryview(self.buf)
            self.fill = self._fill_mapped  # type: ignore[method-assign]
            self.skip = self._skip_mapped  # type: ignore[method-assign]
            self.mapped = True
            return
        self.mapped = False
        self.buf = bytearray(size)
        self.mv = memoryview(self.buf)
        self._readinto = getattr(src, "readinto", None)

    def offset(self) -> int:
        return self.base + self.pos

    def avail(self) -> int:
        return self.end - self.pos

    def fill(self, n: int) -> bool:
        """Make n bytes available at pos; False when the stream ends first."""
        if self.end - self.pos >= n:
            return True
        if n > self.size:
            raise ValueError(f"record of {n} bytes exceeds the reader window")
        if self.pos + n > self.size:
            # Slide the unread tail to the front (earlier memoryviews see new bytes).
            keep = self.end - self.pos
            self.buf[0:keep] = self.buf[self.pos : self.end]
            self.base += self.pos
            self.pos, self.end = 0, keep
        while self.end - self.pos < n and not self.eof:
            if self._readinto is not None:
                got = self._readinto(self.mv[self.end :]) or 0
            else:
                data = self.src.read(self.size - self.end)
                got = len(data) if data else 0
                self.mv[self.end : self.end + got] = data or b""
            if not got:
                self.eof = True
            else:
                self.end += got
        return self.end - self.pos >= n

    # -- the mapped backing --------------------------------------------------------------

    def _fill_mapped(self, n: int) -> bool:
        if self.end - self.pos >= n:
            return True
        if n > self.size:
            raise ValueError(f"record of {n} bytes exceeds the reader window")
        at = self.base + self.pos  # stream offset wanted
        if self._start + at + n > self._file_size:
            self._file_size = os.fstat(self._fd).st_size  # a file still being written
        file_at = self._start + at
        left = self._file_size - file_at
        if left <= self.end - self.pos:
            self.eof = True  # nothing beyond what is mapped
            return self.end - self.pos >= n
        start = file_at - file_at % _GRAIN
        length = min(self.size + _GRAIN, self._file_size - start)
        if length <= 0:
            self.eof = True
            return False
        self._release()
        m = mmap.mmap(self._fd, length, flags=mmap.MAP_SHARED | _POPULATE, prot=mmap.PROT_READ, offset=start)
        try:
            m.madvise(mmap.MADV_SEQUENTIAL)
        except (AttributeError, OSError):
            pass
        self.buf = m
        self.mv = memoryview(m)
        self.base = start - self._start
        self.pos = file_at - start
        self.end = length
        self.eof = start + length >= self._file_size
        return self.end - self.pos >= n

    def _release(self) -> None:
        """Let go of the current map: its pages leave our resident set now (MADV_DONTNEED
        on a read-only file map only drops our page-table entries: a record still holding
        a view into it reads the same bytes, faulted in again from the page cache), and the
        map itself is unmapped when the last such view goes."""
        old = self.buf
        self.buf = b""
        self.mv = memoryview(self.buf)
        if isinstance(old, mmap.mmap):
            try:
                old.madvise(mmap.MADV_DONTNEED)
            except (AttributeError, OSError, ValueError):
                pass

    def _skip_mapped(self, n: int) -> None:
        if self.end - self.pos >= n:
            self.pos += n
            return
        target = self.base + self.pos + n
        if self._start + target > self._file_size:
            self._file_size = os.fstat(self._fd).st_size
            if self._start + target > self._file_size:
                raise Truncated()
        # jump without mapping (or touching) what lies between
        self._release()
        self.base, self.pos, self.end = target, 0, 0
        self.eof = False

    # -- both ----------------------------------------------------------------------------

    def need(self, n: int) -> None:
        if not self.fill(n):
            raise Truncated()

    def take_bytes(self, n: int) -> bytes:
        """n bytes as an owned copy, for records larger than the window too."""
        if n <= self.size:
            self.need(n)
            out = bytes(self.mv[self.pos : self.pos + n])
            self.pos += n
            return out
        parts, left = [], n
        while left:
            if not self.fill(1):
                raise Truncated()
            k = min(left, self.end - self.pos)
            parts.append(bytes(self.mv[self.pos : self.pos + k]))
            self.pos += k
            left -= k
        return b"".join(parts)

    def skip(self, n: int) -> None:
        while n:
            if not self.fill(1):
                raise Truncated()
            k = min(n, self.end - self.pos)
            self.pos += k
            n -= k
