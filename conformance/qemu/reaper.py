"""Every child process and temporary directory of migconform, undone on every way out.

No single mechanism covers every way a run ends, so there are three, each for what the
others cannot reach:

- a registry in this process: `kill()` and `remove_dir()` on the normal path, an atexit
  sweep for what an exception left, and `emergency_cleanup()` for the command line's
  SIGINT/SIGTERM/SIGHUP handler (conformance.cli), which then exits at once;
- PR_SET_PDEATHSIG(SIGKILL) in every child, set between fork and exec: the kernel kills a
  QEMU whose parent dies, SIGKILL of the parent included. (It fires when the *thread* that
  started the child ends, so a child must be stopped by the thread that started it, as
  every user here does.)
- a guardian process (conformance/qemu/guardian.py), started on first use, that holds a
  pipe only we write to: when the pipe ends, it kills the process groups and removes the
  directories still registered. Only it can remove a directory after our SIGKILL.

Every child runs in a session (so a process group) of its own: a terminal's Ctrl-C reaches
migconform alone, and killing the group also kills the helpers QEMU forks (exec: migration).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator, Sequence

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

# pgid (= pid of the leader: each child starts its own session) -> the Popen of the leader
_groups: dict[int, subprocess.Popen] = {}
# paths of temporary directories, registered *before* they are created
_dirs: dict[str, None] = {}

try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
    _prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    _prctl.restype = ctypes.c_int
except (OSError, AttributeError):  # not glibc/Linux: the registry and the guardian remain
    _prctl = None


def _child_setup(parent: int):
    """Runs in the child between fork and exec: die with the parent. Resolved before the
    fork so that the child calls one C function and touches no lock."""

    def setup() -> None:
        if _prctl is not None:
            _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the prctl: nobody will reap us
            os.kill(os.getpid(), signal.SIGKILL)

    return setup


# ---------------------------------------------------------------- the guardian

class _Guardian:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._owner = 0  # pid that started it (a forked child needs its own)
        self.failed: str | None = None  # why there is none, if it could not start

    def send(self, line: bytes, *, start: bool = True) -> None:
        """Tell the guardian; with `start` False only if one runs already (a short-lived
        child alone does not need one: PDEATHSIG covers it, and there is no directory)."""
        with self._lock:
            for attempt in range(2):
                if self._proc is None or self._owner != os.getpid():
                    if not start or not self._start():
                        return
                    if line[:2] in (b"-g", b"-d"):
                        return  # a fresh guardian was told the current state; nothing to forget
                try:
                    os.write(self._proc.stdin.fileno(), line)
                    return
                except OSError:  # it died (someone killed it): start another, once
                    self._proc = None

    def _start(self) -> bool:
        script = Path(__file__).with_name("guardian.py")
        try:
            proc = subprocess.Popen([sys.executable, "-I", str(script)], stdin=subprocess.PIPE,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    start_new_session=True)
        except OSError as e:
            self.failed = f"cannot start {script.name}: {e}"
            return False
        self._proc, self._owner = proc, os.getpid()
        state = b"".join([b"+g %d\n" % g for g in list(_groups)] + [b"+d %s\n" % _hex(d) for d in list(_dirs)])
        if state:
            try:
                os.write(proc.stdin.fileno(), state)
            except OSError:
                pass
        return True

    def close(self, timeout: float = 2.0) -> None:
        """Our own clean-up is done: let it exit (it finds nothing left to do)."""
        proc, self._proc = self._proc, None
        if proc is None or self._owner != os.getpid():
            return
        try:
            proc.stdin.close()
            proc.wait(timeout)
        except (OSError, subprocess.TimeoutExpired):
            pass

    def forget_after_fork(self) -> None:
        # the pipe is the parent's; closing our copy does not end it (the parent still holds it)
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
            proc.returncode = 0  # not our child: never wait for it
        self._lock = threading.Lock()


_guardian = _Guardian()


def _hex(path: str) -> bytes:
    return os.fsencode(path).hex().encode()


def _after_fork_in_child() -> None:
    # a forked child (multiprocessing) must not kill or remove what its parent owns
    _groups.clear()
    _dirs.clear()
    _guardian.forget_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


# ---------------------------------------------------------------- processes

def spawn(argv: Sequence[str], *, env: dict[str, str] | None = None, stdin=subprocess.DEVNULL,
          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **popen_kw) -> subprocess.Popen:
    """Start a child in its own session, tied to us (PDEATHSIG) and registered; stop it
    with `kill()` from the same thread."""
    proc = subprocess.Popen(list(argv), env=env, stdin=stdin, stdout=stdout, stderr=stderr,
                            start_new_session=True, preexec_fn=_child_setup(os.getpid()), **popen_kw)
    _groups[proc.pid] = proc
    _guardian.send(b"+g %d\n" % proc.pid, start=False)
    return proc


def kill(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGKILL the child's process group (if the child is not reaped yet, its pid is still
    the group's id), reap it, forget it. Idempotent. Raises TimeoutError if it survives."""
    if proc.returncode is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"pid {proc.pid} did not die within {timeout:.0f} s of SIGKILL") from None
    if _groups.pop(proc.pid, None) is not None:
        _guardian.send(b"-g %d\n" % proc.pid, start=False)


def run(argv: Sequence[str], *, env: dict[str, str] | None = None, timeout: float) -> subprocess.CompletedProcess:
    """Run to completion, stdin closed, output captured as text; killed after `timeout`
    (subprocess.TimeoutExpired)."""
    proc = spawn(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        kill(proc)
    return subprocess.CompletedProcess(list(argv), proc.returncode, out.decode(errors="replace"),
                                       err.decode(errors="replace"))


def live_groups() -> list[int]:
    """Process groups started and not yet killed (for tests and diagnostics)."""
    return list(_groups)


# ---------------------------------------------------------------- temporary directories

def make_temp_dir(prefix: str = "migconform-", dir: Path | str | None = None) -> Path:
    """Like tempfile.mkdtemp, but registered before it exists: no moment at which it exists
    and nobody would remove it."""
    base = os.path.abspath(dir if dir is not None else tempfile.gettempdir())
    for _ in range(100):
        path = os.path.join(base, prefix + secrets.token_hex(4))
        _dirs[path] = None
        _guardian.send(b"+d %s\n" % _hex(path))
        try:
            os.mkdir(path, 0o700)
            return Path(path)
        except FileExistsError:
            forget_dir(path)
        except BaseException:
            forget_dir(path)
            raise
    raise FileExistsError(f"no free temporary directory name {prefix}* in {base}")


def remove_dir(path: Path | str) -> None:
    """Remove a directory made by make_temp_dir() and forget it. Idempotent."""
    shutil.rmtree(path, ignore_errors=True)
    forget_dir(path)


def forget_dir(path: Path | str) -> None:
    """Stop tracking (the directory was renamed into place: it is a result now)."""
    key = str(path)
    if key in _dirs:
        del _dirs[key]
        _guardian.send(b"-d %s\n" % _hex(key))


@contextlib.contextmanager
def temporary_directory(prefix: str = "migconform-", dir: Path | str | None = None) -> Iterator[Path]:
    path = make_temp_dir(prefix, dir)
    try:
        yield path
    finally:
        remove_dir(path)


# ---------------------------------------------------------------- ways out

def emergency_cleanup(wait: float = 3.0) -> None:
    """Kill every registered process group, reap the leaders (up to `wait` s), remove every
    registered directory. Safe from a signal handler in the main thread: takes no lock,
    iterates over copies; the caller exits right after."""
    groups = list(_groups.items())
    for pgid, _ in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass
    deadline = time.monotonic() + wait
    for pgid, proc in groups:
        while proc.returncode is None:
            try:
                if os.waitpid(pgid, os.WNOHANG)[0] == pgid:
                    break
            except ChildProcessError:  # reaped by Popen in another thread
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.005)
    for d in list(_dirs):
        shutil.rmtree(d, ignore_errors=True)


@atexit.register
def _at_exit() -> None:
    for proc in list(_groups.values()):
        try:
            kill(proc, timeout=5.0)
        except TimeoutError:
            pass
    for d in list(_dirs):
        remove_dir(d)
    _guardian.close()
