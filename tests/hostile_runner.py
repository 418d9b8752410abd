"""Running one hostile case (strategies/hostile.py) and judging the run against the budgets
(wireformat/budgets.py): as a subprocess of the CLI (tests/test_hostile.py) or forked from a
warm interpreter (scripts/hostile_run.py). Here in tests/ because it starts processes."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from strategies.hostile import Case, materialise
from wireformat.budgets import BUDGETS


@dataclass
class Outcome:
    exit: int | None  # None: killed (time budget) or died by a signal
    stderr: str
    seconds: float
    maxrss: int  # bytes
    timed_out: bool = False
    signal: int | None = None

    def problems(self) -> list[str]:
        """What breaks the contract: empty when the run is clean."""
        out = []
        if self.timed_out:
            out.append("over-time")
        elif self.exit is None:
            out.append(f"signal {self.signal}")
        elif self.exit not in (0, 1, 2):
            out.append(f"exit {self.exit}")
        if "Traceback" in self.stderr:
            out.append("traceback")
        if "internal error" in self.stderr:
            out.append("over-memory" if "MemoryError" in self.stderr else "internal-error")
        lines = [ln for ln in self.stderr.splitlines() if ln.strip()]
        if len(lines) > 1:
            out.append("multi-line-error")
        if self.maxrss > BUDGETS.process_memory:
            out.append("over-memory")
        return out


def _limit_memory(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def run_subprocess(case: Case, *, timeout: float = BUDGETS.input_seconds,
                   memory: int = BUDGETS.process_memory) -> Outcome:
    """One case as `python -m conformance.cli ...` under RLIMIT_AS and a timeout."""
    with tempfile.TemporaryDirectory(prefix="hostile-") as d:
        argv = materialise(case, Path(d))
        t0 = time.monotonic()
        p = subprocess.Popen([sys.executable, "-m", "conformance.cli", *argv], stdin=subprocess.PIPE,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             preexec_fn=lambda: _limit_memory(memory))
        try:
            _, err = p.communicate(case.stdin, timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
            timed_out = True
        rc = p.returncode
        # the memory budget is RLIMIT_AS itself here (an allocation past it is a MemoryError)
        return Outcome(None if timed_out or rc < 0 else rc, err.decode(errors="replace"), time.monotonic() - t0,
                       0, timed_out, -rc if rc < 0 and not timed_out else None)


def run_forked(case: Case, *, timeout: float = BUDGETS.input_seconds, memory: int = BUDGETS.process_memory) -> Outcome:
    """One case in a child forked from this (warm) interpreter: `conformance.cli.main(argv)`
    under RLIMIT_AS, killed at the timeout; its own peak RSS from wait4."""
    with tempfile.TemporaryDirectory(prefix="hostile-") as d:
        root = Path(d)
        argv = materialise(case, root)
        (root / ".stdin").write_bytes(case.stdin)
        err_path = root / ".stderr"
        t0 = time.monotonic()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 3
            try:
                _limit_memory(memory)
                fd = os.open(root / ".stdin", os.O_RDONLY)
                os.dup2(fd, 0)
                out = os.open(os.devnull, os.O_WRONLY)
                os.dup2(out, 1)
                e = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                os.dup2(e, 2)
                # the standard streams on the new descriptors (pytest's capture objects are not fds)
                sys.stdin = open(0, "r", closefd=False)
                sys.stdout = open(1, "w", closefd=False)
                sys.stderr = open(2, "w", closefd=False)
                from conformance.cli import main

                code = main(argv)
            except SystemExit as x:
                code = x.code if isinstance(x.code, int) else 2
            except BaseException:
                import traceback

                traceback.print_exc()
                code = 4
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                except BaseException:
                    pass
                os._exit(code)
        deadline = t0 + timeout
        timed_out = False
        while True:
            wpid, status, ru = os.wait4(pid, os.WNOHANG)
            if wpid:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                _, status, ru = os.wait4(pid, 0)
                timed_out = True
                break
            time.sleep(0.002)
        err = err_path.read_bytes().decode(errors="replace") if err_path.exists() else ""
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        return Outcome(os.WEXITSTATUS(status) if os.WIFEXITED(status) else None, err, time.monotonic() - t0,
                       ru.ru_maxrss * 1024, timed_out, None if timed_out else sig)
