"""Opening what a user points us at: a file (plain or .gz/.xz/.zst, recognised by its
magic bytes, not its name), or standard input for `-`. Errors are one line."""

from __future__ import annotations

import io
import os
import select
import stat
import sys
from typing import BinaryIO, Callable

from wireformat.budgets import BUDGETS

_MAGICS = {
    b"\x1f\x8b": "gzip",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"BZh": "bzip2",
}


class InputError(Exception):
    """A path that cannot be read as a stream; the message is one line."""


def _detect(head: bytes) -> str | None:
    for magic, name in _MAGICS.items():
        if head.startswith(magic):
            return name
    return None


class Prepended(io.RawIOBase):
    """Bytes already read from a stream, put back in front of it (to look at the first
    bytes of a pipe and still hand all of it on)."""

    def __init__(self, raw: BinaryIO, head: bytes):
        self.raw, self.head = raw, head

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self.head:
            n = min(len(b), len(self.head))
            b[:n] = self.head[:n]
            self.head = self.head[n:]
            return n
        return self.raw.readinto(b)


PIPE_SIZE = 1 << 20  # Linux's default pipe-max-size for an unprivileged process


def _widen_pipe(f) -> None:
    """Ask for a 1 MiB pipe buffer on a pipe we read (64 KiB by default): the writer and the
    checker then trade 16x fewer wake-ups, which on a busy machine is most of the cost."""
    try:
        import fcntl

        fd = f.fileno()
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_SIZE)
    except (OSError, ValueError, AttributeError, ImportError):
        pass  # not a pipe we may widen: read it as it is


def _read_errors() -> tuple:
    """What a decompressor raises for bad data (imported only when a stream is compressed)."""
    import lzma
    import zlib

    import zstandard

    return (OSError, EOFError, lzma.LZMAError, zlib.error, zstandard.ZstdError)


class Counted(io.RawIOBase):
    """Bytes read so far from an input (for error messages and the decompression budget);
    a read error becomes one InputError line naming the input and the offset."""

    def __init__(self, raw, name: str):
        self.raw, self.name, self.offset = raw, name, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        try:
            n = self.raw.readinto(b)
        except OSError as e:
            raise InputError(f"{self.name}: read error at byte {self.offset}: {e.strerror or e}") from None
        self.offset += n or 0
        return n


class ZstdFrames(io.RawIOBase):
    """zstd frames one after another (as `zstd`, `pzstd` or `cat a.zst b.zst` write them),
    fed in small pieces so that one read's output stays bounded (a zstd block of 128 KiB can
    take 4 bytes), and a stream cut inside a frame is an error, not a short stream."""

    PIECE = 4096  # compressed bytes per step: at most ~128 MiB out, even for a bomb

    def __init__(self, src):
        import zstandard

        self.src, self.dctx, self.obj = src, zstandard.ZstdDecompressor(), None
        self.out, self.pos, self.ended = b"", 0, False

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while self.pos >= len(self.out):
            if self.ended:
                return 0
            data = self.src.read(self.PIECE)
            if not data:
                self.ended = True
                if self.obj is not None and not self.obj.eof:
                    raise EOFError("zstd data ends inside a frame")
                return 0
            parts = []
            while data:
                if self.obj is None or self.obj.eof:
                    self.obj = self.dctx.decompressobj()
                parts.append(self.obj.decompress(data))
                data = self.obj.unused_data if self.obj.eof else b""
            self.out, self.pos = b"".join(parts), 0
        n = min(len(b), len(self.out) - self.pos)
        b[:n] = self.out[self.pos : self.pos + n]
        self.pos += n
        return n


class Decompressed(io.RawIOBase):
    """A decompressing reader held to the budgets: corrupt or truncated compressed data is
    one InputError line naming the input and the offsets (exit 2, the input is unreadable);
    so is output beyond Budgets.decompression_ratio times the compressed bytes read (a bomb),
    once past Budgets.ratio_grace."""

    def __init__(self, inner, counted: Counted, name: str):
        self.inner, self.counted, self.name, self.offset = inner, counted, name, 0
        self.errors = _read_errors()

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        try:
            n = self.inner.readinto(b)
        except InputError:
            raise
        except self.errors as e:
            raise InputError(f"{self.name}: corrupt or truncated compressed data at byte {self.counted.offset} "
                             f"(decompressed byte {self.offset}): {e}") from None
        self.offset += n or 0
        if self.offset > BUDGETS.ratio_grace and self.offset > BUDGETS.decompression_ratio * max(self.counted.offset, 1):
            raise InputError(f"{self.name}: {self.offset} bytes decompressed from {self.counted.offset}: more than "
                             f"{BUDGETS.decompression_ratio} to 1, a decompression bomb")
        return n

    def close(self) -> None:
        try:
            self.inner.close()
        finally:
            super().close()


class Waiting:
    """How long an input that blocks (tcp:, a FIFO, stdin) is waited for, and who is told
    what is waited for (the command line sets both; default: Budgets.wait_seconds, silent)."""

    timeout: float = BUDGETS.wait_seconds
    announce: Callable[[str], None] | None = None


def _wait_readable(fd: int, name: str, what: str) -> None:
    """Block until fd has data or its writer closed, within Waiting.timeout; say what is
    waited for only when it does not come at once."""
    if stat.S_ISREG(os.fstat(fd).st_mode):
        return
    ready, _, _ = select.select([fd], [], [], min(0.5, Waiting.timeout))
    if ready:
        return
    if Waiting.announce is not None:
        Waiting.announce(f"waiting for {what} on {name} (timeout {Waiting.timeout:g} s)")
    ready, _, _ = select.select([fd], [], [], max(Waiting.timeout - 0.5, 0))
    if not ready:
        raise InputError(f"{name}: waited {Waiting.timeout:g} s for {what}, none came")


def open_stream(path: str, *, listen_timeout: float | None = None) -> tuple[BinaryIO, str]:
    """(binary file object, description) for a path, '-' (stdin) or tcp:HOST:PORT (wait
    for a migration source to connect, as a destination does). A FIFO or stdin is waited
    for within Waiting.timeout, as a connection is."""
    timeout = Waiting.timeout if listen_timeout is None else listen_timeout
    if path.startswith("tcp:"):
        from conformance.qemu.listener import ListenError, accept_stream

        try:
            return accept_stream(path, timeout, Waiting.announce)
        except ListenError as e:
            raise InputError(str(e)) from None
    if path == "-":
        raw = sys.stdin.buffer
        name = "<stdin>"
        if sys.stdin.isatty():
            raise InputError("<stdin>: a terminal, not a stream (redirect a file or a pipe into it)")
        _wait_readable(raw.fileno(), name, "data")
        _widen_pipe(raw)
    else:
        if os.path.isdir(path):
            raise InputError(f"{path}: is a directory (give `check`/`dump` the directory: a capture is read "
                             "with its channels)")
        try:
            if stat.S_ISFIFO(os.stat(path).st_mode):  # opening blocks until a writer comes: wait here instead
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
                try:
                    _wait_readable(fd, path, "a writer")
                except BaseException:
                    os.close(fd)
                    raise
                os.set_blocking(fd, True)
                raw = os.fdopen(fd, "rb", buffering=0)
            else:
                raw = open(path, "rb", buffering=0)
        except OSError as e:
            raise InputError(f"{path}: {e.strerror or e}") from None
        name = path
    try:
        head = raw.read(6) or b""
    except OSError as e:  # a directory given as stdin, /proc files that refuse reads, ...
        raise InputError(f"{name}: {e.strerror or e}") from None
    kind = _detect(head)
    if kind is None and path != "-" and raw.seekable():
        raw.seek(0)  # a plain file as it is: the reader maps it instead of copying it in
        return raw, name
    src = Counted(Prepended(raw, head), name)
    if kind is None:
        return src, name
    # the decompressors are imported only for a stream that needs one (start-up time)
    import bz2
    import gzip
    import lzma

    import zstandard

    try:
        if kind == "gzip":
            inner = gzip.GzipFile(fileobj=io.BufferedReader(src, 1 << 20))
        elif kind == "xz":
            inner = lzma.LZMAFile(io.BufferedReader(src, 1 << 20))
        elif kind == "bzip2":
            inner = bz2.BZ2File(io.BufferedReader(src, 1 << 20))
        else:
            inner = ZstdFrames(src)
    except (OSError, zstandard.ZstdError) as e:
        raise InputError(f"{name}: cannot open {kind} data: {e}") from None
    return Decompressed(inner, src, f"{name} ({kind})"), f"{name} ({kind})"


def read_at_most(src: BinaryIO, limit: int) -> bytes:
    """Everything `src` has, up to `limit` bytes (one read of a raw stream may return less)."""
    parts, n = [], 0
    while n < limit:
        b = src.read(min(limit - n, 1 << 20))
        if not b:
            break
        parts.append(b)
        n += len(b)
    return b"".join(parts)


TRAILER_WINDOW = BUDGETS.trailer_window


def read_vmdescription(path: str) -> bytes | None:
    """The VMDESCRIPTION JSON at the end of a plain stream file, read before the stream
    itself so device bodies can be framed by their descriptions (machine types without
    section footers need it). None for pipes, compressed files, or no trailer."""
    if path == "-" or path.startswith("tcp:") or not os.path.isfile(path):
        return None
    try:
        with open(path, "rb") as f:
            if _detect(f.read(6)) is not None:
                return None
            size = f.seek(0, os.SEEK_END)
            n = min(size, TRAILER_WINDOW)
            f.seek(size - n)
            tail = f.read(n)
    except OSError:
        return None
    # EOF (0x00), QEMU_VM_VMDESCRIPTION (0x06), be32 length reaching exactly the end, '{'
    end = len(tail)
    while True:
        p = tail.rfind(b"\x00\x06", 0, end)
        if p < 0:
            return None
        body = p + 6
        if body < len(tail) and int.from_bytes(tail[p + 2 : body], "big") == len(tail) - body and tail[body : body + 1] == b"{":
            return tail[body:]
        end = p + 1
