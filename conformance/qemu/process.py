"""One QEMU process with a QMP connection; always killed on exit, every wait bounded."""

from __future__ import annotations

import asyncio
import atexit
import re
import subprocess
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from qemu.qmp import ExecuteError, QMPClient, QMPError

from conformance.qemu import reaper
from conformance.qemu.binaries import QemuBinary, QemuError

DEFAULT_ARGS = ("-nodefaults", "-display", "none", "-S")
STDERR_PREFIX = "qemu-system-x86_64: "


class QemuExited(QemuError):
    """The process ended when it should not have (message: its stderr in one line)."""

    def __init__(self, message: str, returncode: int | None, stderr: str):
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr


class QemuTimeout(QemuError):
    pass


class QmpCommandError(QemuError):
    """QEMU answered a QMP command with an error."""

    def __init__(self, command: str, error_class: str, desc: str):
        super().__init__(f"QMP {command}: {desc}")
        self.command, self.error_class, self.desc = command, error_class, desc


class MigrationFailed(QemuError):
    def __init__(self, status: str, info: Mapping[str, Any]):
        super().__init__(f"migration {status}: {info.get('error-desc', 'no error-desc')}")
        self.status, self.info = status, dict(info)


# strong references: a QemuProcess dropped without terminate() is still killed at exit
_live: "set[QemuProcess]" = set()


@atexit.register
def _kill_leftovers() -> None:  # a crashed test must not leave QEMUs behind
    for p in list(_live):
        p.terminate()


# a sanitizer runtime's notice at start-up ("==123==WARNING: ASan doesn't fully support
# makecontext/swapcontext ..."): not an error of QEMU's
_SANITIZER_NOTICE = re.compile(r"==\d+==WARNING: ")


def error_lines(stderr: str) -> list[str]:
    """Non-empty stderr lines without QEMU's "qemu-system-x86_64: " prefix (sanitizer
    start-up notices dropped)."""
    out = []
    for line in stderr.splitlines():
        line = line.rstrip()
        if line and not _SANITIZER_NOTICE.match(line):
            out.append(line.removeprefix(STDERR_PREFIX))
    return out


def summary(stderr: str, limit: int = 400) -> str:
    """stderr as one line: its error lines (warnings dropped) joined; QEMU often puts the
    cause first and a hint or a summary last ("Use -machine help ...")."""
    lines = [ln for ln in error_lines(stderr) if not ln.startswith("warning:")] or error_lines(stderr)
    text = " | ".join(lines) or "no error output"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class QemuProcess:
    """`with QemuProcess(binary, ["-machine", "pc"]) as q: q.cmd("query-status")`."""

    def __init__(self, binary: QemuBinary, args: Iterable[object] = (), *,
                 defaults: Iterable[str] = DEFAULT_ARGS, start_timeout: float = 15.0,
                 cmd_timeout: float = 30.0, name: str = "qemu"):
        self.binary = binary
        self.name = name
        self.start_timeout = start_timeout
        self.cmd_timeout = cmd_timeout
        # the socket path must stay short (108 bytes), so a private dir under $TMPDIR
        self._dir = reaper.make_temp_dir("migconform-")
        self.qmp_path = self._dir / "qmp.sock"
        self.stderr_path = self._dir / "stderr.log"
        self.argv = binary.argv(*defaults, "-qmp", f"unix:{self.qmp_path},server=on,wait=off", *args)
        self._proc: subprocess.Popen | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._qmp: QMPClient | None = None
        self._stderr_cache: str | None = None
        self._event_history: list[dict] = []  # what the client had received when it was disconnected
        self.started_at = 0.0
        _live.add(self)  # even unstarted: terminate() removes the private dir

    # ------------------------------------------------------------ lifecycle
    def __enter__(self) -> "QemuProcess":
        try:
            if self._proc is None:
                self.start()
        except BaseException:
            self.terminate()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.terminate()

    def start(self) -> "QemuProcess":
        if self._proc is not None:
            raise QemuError("QemuProcess.start() called twice")
        with open(self.stderr_path, "wb") as err:
            # own session, tied to us: terminate() kills QEMU together with its exec: helpers
            # its temporary files too (a snapshot=on drive's overlay lives in $TMPDIR between
            # creation and unlink): in the private dir, removed with it whatever happens
            self._proc = reaper.spawn(self.argv, env={**self.binary.env(), "TMPDIR": str(self._dir)}, stderr=err)
        _live.add(self)
        self.started_at = time.monotonic()
        self._loop = asyncio.new_event_loop()
        deadline = self.started_at + self.start_timeout
        while True:
            self._check_alive("while starting")
            if self.qmp_path.exists():
                client = QMPClient(self.name)
                self._qmp = client  # so terminate() disconnects it whatever happens
                try:
                    self._run(client.connect(str(self.qmp_path)), max(0.1, deadline - time.monotonic()))
                    return self
                except asyncio.TimeoutError:  # before OSError: TimeoutError is one
                    self._check_alive("while starting")
                    raise QemuTimeout(f"QEMU {self.binary.version}: no QMP greeting within {self.start_timeout:.0f} s") from None
                except (QMPError, OSError):  # socket bound but not yet listening: retry
                    self._qmp = None
                    try:
                        self._run(client.disconnect(), 1.0)
                    except Exception:
                        pass
            if time.monotonic() > deadline:
                raise QemuTimeout(f"QEMU {self.binary.version}: QMP socket not ready within {self.start_timeout:.0f} s")
            time.sleep(0.01)

    def terminate(self, timeout: float = 10.0) -> None:
        """Kill (no graceful shutdown: nothing here is worth keeping) and clean up. Idempotent."""
        proc = self._proc
        if proc is not None:
            try:
                reaper.kill(proc, timeout)
            except TimeoutError as e:
                raise QemuError(f"QEMU {e}") from None
        if self._qmp is not None:
            self._event_history = self.events()
            try:
                self._run(self._qmp.disconnect(), 2.0)
            except BaseException:  # the peer is gone; whatever the client says about it is moot
                pass
            self._qmp = None
        if self._loop is not None:
            self._close_loop()
        if self._stderr_cache is None and self._dir.exists():
            self._stderr_cache = self._read_stderr()
        reaper.remove_dir(self._dir)
        _live.discard(self)

    def _close_loop(self) -> None:
        # cancel what the QMP client left behind, or its tasks complain when collected
        loop, self._loop = self._loop, None
        assert loop is not None
        pending = asyncio.all_tasks(loop)
        for t in pending:
            t.cancel()
        if pending:
            try:
                loop.run_until_complete(asyncio.wait(pending, timeout=2.0))
            except BaseException:
                pass
        loop.close()

    # ------------------------------------------------------------ state
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def stderr(self) -> str:
        if self._stderr_cache is not None:
            return self._stderr_cache
        return self._read_stderr()

    @property
    def error_lines(self) -> list[str]:
        return error_lines(self.stderr)

    def _read_stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_exit(self, timeout: float) -> int | None:
        """Exit code, or None if still running after `timeout`."""
        if self._proc is None:
            return None
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def _check_alive(self, during: str) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            raise QemuExited(f"QEMU {self.binary.version} exited with code {self._proc.returncode} {during}: "
                             f"{summary(self.stderr)}", self._proc.returncode, self.stderr)

    # ------------------------------------------------------------ QMP
    def _run(self, coro, timeout: float):
        assert self._loop is not None
        return self._loop.run_until_complete(asyncio.wait_for(coro, timeout))

    def cmd(self, name: str, args: Mapping[str, Any] | None = None, *, timeout: float | None = None,
            **kwargs: Any) -> Any:
        """Run a QMP command (arguments as a dict, for hyphenated names, or as keywords)."""
        return self._execute(name, {**(args or {}), **kwargs}, timeout, oob=False)

    def execute_oob(self, name: str, args: Mapping[str, Any] | None = None, *, timeout: float | None = None,
                    **kwargs: Any) -> Any:
        """Run a QMP command out of band (exec-oob): QEMU answers it from the monitor's own
        thread, even while its main loop is blocked (e.g. migrate-recover while a vCPU waits
        for a page). Only commands QEMU allows out of band are accepted."""
        return self._execute(name, {**(args or {}), **kwargs}, timeout, oob=True)

    def events(self, *, wait: float = 0.0) -> list[dict]:
        """Every QMP event received so far, oldest first; kept once the process is gone.
        `wait`: first let the client read for that many seconds without sending a command
        (events come from QEMU's other threads even while its main loop is blocked)."""
        if self._qmp is None:
            return list(self._event_history)
        if wait > 0:
            try:
                self._run(asyncio.sleep(wait), wait + 1.0)
            except asyncio.TimeoutError:
                pass
        return [dict(e) for e in self._qmp.events.history]

    def wait_event(self, name: str, timeout: float, *, since: int = 0) -> dict:
        """The first event `name` among the events from index `since` on (see events()),
        waiting up to `timeout` seconds for it; QemuTimeout if none comes, QemuExited if
        the process ends first."""
        deadline = time.monotonic() + timeout
        drained = False
        while True:
            gone = not self.alive() or self._qmp is None
            found = next((e for e in self.events()[since:] if e.get("event") == name), None)
            if found is not None:
                return found
            if gone:
                if not drained and self._qmp is not None:  # what it sent before it died may be unread
                    drained = True
                    self.events(wait=0.05)
                    continue
                self._check_alive(f"waiting for event {name}")
                raise QemuError(f"event {name}: QEMU is not running")
            left = deadline - time.monotonic()
            if left <= 0:
                raise QemuTimeout(f"no {name} event within {timeout:.0f} s")
            self.events(wait=min(0.02, left))

    def _execute(self, name: str, arguments: dict, timeout: float | None, *, oob: bool) -> Any:
        if self._qmp is None:
            self._check_alive(f"before QMP {name}")
            raise QemuError(f"QMP {name}: not connected")
        t = self.cmd_timeout if timeout is None else timeout
        try:
            return self._run(self._qmp.execute(name, arguments or None, oob=oob), t)
        except ExecuteError as e:
            raise QmpCommandError(name, e.error_class, str(e)) from None
        except asyncio.TimeoutError:
            self._check_alive(f"during QMP {name}")
            raise QemuTimeout(f"QMP {name}: no answer within {t:.0f} s") from None
        except (QMPError, OSError, EOFError) as e:
            self.wait_exit(2.0)  # the connection drops just before the process is gone
            self._check_alive(f"during QMP {name}")
            raise QemuError(f"QMP {name}: connection lost: {e!r}") from None

    def send_fd(self, fdname: str, fd: int) -> None:
        """Pass an open file descriptor to QEMU (SCM_RIGHTS) under `fdname` (QMP getfd)."""
        assert self._qmp is not None
        self._qmp.send_fd_scm(fd)
        self.cmd("getfd", fdname=fdname)

    def set_capabilities(self, caps: Mapping[str, bool]) -> None:
        if caps:
            self.cmd("migrate-set-capabilities",
                     capabilities=[{"capability": k, "state": bool(v)} for k, v in caps.items()])

    def set_parameters(self, params: Mapping[str, Any]) -> None:
        if params:
            self.cmd("migrate-set-parameters", dict(params))

    def query_migrate(self) -> dict:
        return self.cmd("query-migrate")

    def wait_migration(self, statuses: Iterable[str] = ("completed",), timeout: float = 60.0, *,
                       fail: Iterable[str] = ("failed", "cancelled")) -> dict:
        """Poll query-migrate until its status is one of `statuses` (returned); a status in
        `fail` raises MigrationFailed, the process ending raises QemuExited."""
        want, bad = set(statuses), set(fail) - set(statuses)
        deadline = time.monotonic() + timeout
        delay, info = 0.005, {}
        while True:
            info = self.cmd("query-migrate", timeout=max(1.0, min(self.cmd_timeout, deadline - time.monotonic())))
            status = info.get("status")
            if status in want:
                return info
            if status in bad:
                raise MigrationFailed(status, info)
            if time.monotonic() > deadline:
                raise QemuTimeout(f"migration still {status!r} after {timeout:.0f} s")
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
