"""Opening what a user points us at: a file (plain or .gz/.xz/.zst, recognised by its
magic bytes, not its name), or standard input for `-`. Errors are one line."""

from __future__ import annotations

import io
import os
import sys
from typing import BinaryIO

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
        import stat

        fd = f.fileno()
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_SIZE)
    except (OSError, ValueError, AttributeError, ImportError):
        pass  # not a pipe we may widen: read it as it is


def open_stream(path: str, *, listen_timeout: float = 300.0) -> tuple[BinaryIO, str]:
    """(binary file object, description) for a path, '-' (stdin) or tcp:HOST:PORT (wait
    for a migration source to connect, as a destination does)."""
    if path.startswith("tcp:"):
        from conformance.qemu.listener import ListenError, accept_stream

        try:
            return accept_stream(path, listen_timeout)
        except ListenError as e:
            raise InputError(str(e)) from None
    if path == "-":
        raw = sys.stdin.buffer
        name = "<stdin>"
        _widen_pipe(raw)
    else:
        if os.path.isdir(path):
            raise InputError(f"{path}: is a directory (capture directories need the multifd reader)")
        try:
            raw = open(path, "rb", buffering=0)
        except OSError as e:
            raise InputError(f"{path}: {e.strerror}") from None
        name = path
    head = raw.read(6) or b""
    kind = _detect(head)
    if kind is None and path != "-" and raw.seekable():
        raw.seek(0)  # a plain file as it is: the reader maps it instead of copying it in
        return raw, name
    src = Prepended(raw, head)
    if kind is None:
        return src, name
    # the decompressors are imported only for a stream that needs one (start-up time)
    import bz2
    import gzip
    import lzma

    import zstandard

    try:
        if kind == "gzip":
            return gzip.GzipFile(fileobj=io.BufferedReader(src, 1 << 20)), f"{name} (gzip)"
        if kind == "xz":
            return lzma.LZMAFile(io.BufferedReader(src, 1 << 20)), f"{name} (xz)"
        if kind == "bzip2":
            return bz2.BZ2File(io.BufferedReader(src, 1 << 20)), f"{name} (bzip2)"
        return zstandard.ZstdDecompressor().stream_reader(src, read_size=1 << 20), f"{name} (zstd)"
    except (OSError, zstandard.ZstdError) as e:
        raise InputError(f"{name}: cannot open {kind} data: {e}") from None


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
