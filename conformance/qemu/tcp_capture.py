"""A loopback TCP proxy that records both directions of every connection through it.

Put it between a migration source and a destination listening on TCP: the source connects
to the proxy, the proxy connects to the destination, and each connection's bytes are kept,
source→destination (`forward`: the main stream, or a multifd channel) and
destination→source (`backward`: the return path). Every wait is bounded; nothing blocks
forever, and the threads are daemons that notice `close()` within a fraction of a second.

    with TcpRecorder(("127.0.0.1", dst_port)) as rec:
        src.cmd("migrate", uri=rec.uri)
        ...
        rec.wait_closed(10.0)
        rp = rec.connections[0].backward
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field

POLL = 0.1  # seconds between checks of the stop flag
CHUNK = 1 << 16


class RecorderError(Exception):
    pass


@dataclass
class RecordedConnection:
    """One proxied connection. `forward`: bytes the client (source) sent; `backward`: bytes
    the server (destination) sent back. Bytes beyond `limit` per direction are forwarded
    but not kept (`truncated` says so)."""

    index: int
    peer: tuple[str, int]
    limit: int
    forward: bytearray = field(default_factory=bytearray)
    backward: bytearray = field(default_factory=bytearray)
    forward_total: int = 0
    backward_total: int = 0
    forward_closed: bool = False  # the client finished sending (EOF or error)
    backward_closed: bool = False
    error: str | None = None
    opened_at: float = 0.0
    closed_at: float | None = None
    # (seconds since the connection opened, direction, bytes) per received chunk
    timeline: list[tuple[float, str, int]] = field(default_factory=list)

    @property
    def closed(self) -> bool:
        return self.forward_closed and self.backward_closed

    @property
    def truncated(self) -> bool:
        return self.forward_total > len(self.forward) or self.backward_total > len(self.backward)

    def _keep(self, direction: str, data: bytes) -> None:
        buf = self.forward if direction == "forward" else self.backward
        room = self.limit - len(buf)
        if room > 0:
            buf += data[:room]
        if direction == "forward":
            self.forward_total += len(data)
        else:
            self.backward_total += len(data)
        self.timeline.append((time.monotonic() - self.opened_at, direction, len(data)))


class TcpRecorder:
    """Listen on `host:port` (0: any free port), forward each connection to `target`."""

    def __init__(self, target: tuple[str, int], *, host: str = "127.0.0.1", port: int = 0,
                 max_connections: int = 16, limit: int = 256 << 20, connect_timeout: float = 5.0):
        self.target = target
        self.max_connections = max_connections
        self.limit = limit
        self.connect_timeout = connect_timeout
        self.connections: list[RecordedConnection] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        try:
            self._srv = socket.create_server((host, port))
        except OSError as e:
            raise RecorderError(f"cannot listen on {host}:{port}: {e.strerror}") from None
        self._srv.settimeout(POLL)
        self.host, self.port = self._srv.getsockname()[:2]

    @property
    def uri(self) -> str:
        return f"tcp:{self.host}:{self.port}"

    # ------------------------------------------------------------ lifecycle
    def __enter__(self) -> "TcpRecorder":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> "TcpRecorder":
        self._spawn(self._accept_loop, "accept")
        return self

    def close(self, timeout: float = 2.0) -> None:
        """Stop accepting, cut every connection, join the threads (bounded). Idempotent."""
        self._stop.set()
        with self._lock:
            socks = list(self._sockets)
        for s in [self._srv, *socks]:
            try:
                s.close()
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        for t in list(self._threads):
            t.join(max(0.0, deadline - time.monotonic()))

    def _spawn(self, fn, name: str, *args) -> None:
        t = threading.Thread(target=fn, args=args, name=f"tcp-recorder-{name}", daemon=True)
        self._threads.append(t)
        t.start()

    # ------------------------------------------------------------ waits
    def wait_connections(self, n: int, timeout: float) -> bool:
        """True once `n` connections were accepted, False after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while len(self.connections) < n:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def wait_closed(self, timeout: float) -> bool:
        """True once every accepted connection has ended in both directions."""
        deadline = time.monotonic() + timeout
        while not all(c.closed for c in self.connections):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def require_whole(self) -> None:
        """Raise RecorderError when a connection carried more than was kept: a capture made
        of its bytes would be cut short while the migration itself completed."""
        for c in self.connections:
            if c.truncated:
                total = max(c.forward_total, c.backward_total)
                raise RecorderError(
                    f"connection {c.index} carried {total} bytes, more than the {self.limit >> 20} MiB a "
                    f"connection may be recorded in memory: the capture would be cut short "
                    f"(raise the recording limit, e.g. capture --record-limit MIB)")

    # ------------------------------------------------------------ threads
    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, peer = self._srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            if len(self.connections) >= self.max_connections:
                client.close()
                continue
            conn = RecordedConnection(index=len(self.connections), peer=peer[:2], limit=self.limit,
                                      opened_at=time.monotonic())
            try:
                server = socket.create_connection(self.target, timeout=self.connect_timeout)
            except OSError as e:
                conn.error = f"cannot connect to {self.target[0]}:{self.target[1]}: {e.strerror or e}"
                conn.forward_closed = conn.backward_closed = True
                conn.closed_at = time.monotonic()
                self.connections.append(conn)
                client.close()
                continue
            for s in (client, server):
                s.settimeout(POLL)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets += [client, server]
            self.connections.append(conn)
            self._spawn(self._pump, f"{conn.index}-fwd", conn, client, server, "forward")
            self._spawn(self._pump, f"{conn.index}-bwd", conn, server, client, "backward")

    def _pump(self, conn: RecordedConnection, src: socket.socket, dst: socket.socket, direction: str) -> None:
        try:
            while not self._stop.is_set():
                try:
                    data = src.recv(CHUNK)
                except TimeoutError:
                    continue
                if not data:
                    break
                conn._keep(direction, data)
                view = memoryview(data)
                while view and not self._stop.is_set():
                    try:
                        sent = dst.send(view)
                    except TimeoutError:
                        continue
                    view = view[sent:]
        except OSError as e:
            if not self._stop.is_set():
                conn.error = conn.error or f"{direction}: {e.strerror or e}"
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)  # pass the end on
            except OSError:
                pass
            if direction == "forward":
                conn.forward_closed = True
            else:
                conn.backward_closed = True
            if conn.closed:
                conn.closed_at = time.monotonic()
                for s in (src, dst):
                    try:
                        s.close()
                    except OSError:
                        pass
