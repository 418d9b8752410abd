"""Accept a migration stream over TCP, the way `-incoming tcp:HOST:PORT` does.

Enough for a precopy source without return path or multifd: the source only writes. The
socket is returned as a binary file object; the caller reads it as it would a file.
"""

from __future__ import annotations

import socket
from typing import BinaryIO, Callable


class ListenError(Exception):
    pass


def parse_tcp_uri(uri: str) -> tuple[str, int]:
    """'tcp:HOST:PORT' (or tcp:[v6]:PORT) -> (host, port)."""
    rest = uri.removeprefix("tcp:")
    host, _, port = rest.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        n = int(port)
    except ValueError:
        raise ListenError(f"{uri}: expected tcp:HOST:PORT") from None
    if not 0 <= n <= 65535:
        raise ListenError(f"{uri}: port {n} is not in 0-65535")
    return host, n


def accept_stream(uri: str, timeout: float = 300.0,
                  announce: Callable[[str], None] | None = None) -> tuple[BinaryIO, str]:
    """The first connection to HOST:PORT as a file; ListenError (one line) when the address
    cannot be listened on or nobody connects within `timeout` seconds. `announce` is told
    what is waited for, once listening."""
    host, port = parse_tcp_uri(uri)
    try:
        srv = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except (OSError, OverflowError) as e:
        raise ListenError(f"{uri}: cannot listen: {getattr(e, 'strerror', None) or e}") from None
    srv.settimeout(timeout)
    if announce is not None:
        bound = srv.getsockname()
        announce(f"listening on {bound[0]}:{bound[1]} for a migration source (timeout {timeout:g} s)")
    try:
        conn, peer = srv.accept()
    except TimeoutError:
        raise ListenError(f"{uri}: no source connected within {timeout:.0f} s") from None
    finally:
        srv.close()
    conn.settimeout(timeout)  # a source that stalls this long is a verdict, not a hang
    return conn.makefile("rb", buffering=0), f"{uri} (from {peer[0]}:{peer[1]})"
