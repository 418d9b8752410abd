"""A multifd capture holds each connection in memory up to a limit: a longer channel fails
the capture with one line instead of leaving a capture whose channels are cut short while
its manifest says the migration completed."""

from __future__ import annotations

import socket
import threading

import pytest

from conformance.qemu.tcp_capture import RecorderError, TcpRecorder
from tests.test_replay import cli


def _sink() -> tuple[socket.socket, threading.Thread]:
    srv = socket.create_server(("127.0.0.1", 0))

    def drain():
        c, _ = srv.accept()
        while c.recv(1 << 16):
            pass
        c.close()

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    return srv, t


@pytest.mark.parametrize("sent,whole", [(4096, True), (4097, False)])
def test_the_recorder_says_when_a_connection_outgrew_its_limit(sent, whole):
    srv, t = _sink()
    with TcpRecorder(srv.getsockname()[:2], limit=4096) as rec:
        with socket.create_connection((rec.host, rec.port)) as c:
            c.sendall(b"x" * sent)
        assert rec.wait_connections(1, 5.0) and rec.wait_closed(5.0)
        assert rec.connections[0].forward_total == sent
        if whole:
            rec.require_whole()
        else:
            with pytest.raises(RecorderError, match="connection 0 carried 4097 bytes"):
                rec.require_whole()
    t.join(5)
    srv.close()


@pytest.mark.qemu
def test_a_channel_longer_than_the_limit_fails_the_capture(qemu, tmp_path, capsys):
    from conformance.versions import NEWEST

    qemu(NEWEST)
    out = tmp_path / "cap"
    # 64 MiB of random RAM over 2 channels: each carries far more than 1 MiB
    code, _, err = cli(capsys, "capture", out, "--qemu", NEWEST, "--mem-mb", "64", "--ram", "random",
                       "--channels", "2", "--record-limit", "1")
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "more than the 1 MiB" in lines[0], err
    assert not out.exists()  # nothing half-written is left
