"""The fixed read window both stream readers (main stream, multifd channels) use.

A bytearray of fixed size over a binary file object; `pos` indexes into it. Memory stays
bounded whatever the stream: records that fit are served as memoryviews into the window
(valid until the window slides), longer ones are copied out in chunks.
"""

from __future__ import annotations

from typing import BinaryIO

from .errors import Truncated


class Window:
    """A fixed bytearray window over the stream; `pos` is an index into it."""

    def __init__(self, src: BinaryIO, size: int):
        self.src = src
        self.size = size
        self.buf = bytearray(size)
        self.mv = memoryview(self.buf)
        self.pos = 0
        self.end = 0
        self.base = 0  # stream offset of buf[0]
        self.eof = False
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
