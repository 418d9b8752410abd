"""Signals at random moments: `migconform capture`, `capture --channels`, `replay` and
`matrix` are sent SIGINT, SIGTERM or SIGHUP, or their process is SIGKILLed, and afterwards no
process of that run is left (every child inherits a per-run token in its environment, which
/proc shows) and no temporary directory either (each run has its own TMPDIR, and a capture's
target must be absent or complete). SIGINT ends with exit 130 and one line on stderr, SIGTERM
and SIGHUP with 128 + the signal's number and one line.

One moment is outside migconform's reach: the interpreter's own start-up (site, runpy),
before the first line of conformance.cli runs. A signal there meets CPython's defaults (killed
by SIGINT, or a KeyboardInterrupt traceback from site). Such runs are recognised (migconform's
handler is the only one that catches SIGTERM: /proc/PID/status SigCgt) and counted apart; they
must still leave nothing behind. The moment right after the handler is installed - the
imports of migconform itself - is tested on purpose.

A quick variant runs a few of them; the slow one many. For the long soak:

    python tests/test_signals.py --runs 200      # prints one line per run and a summary
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOKEN_VAR = "MIGCONFORM_SIGNAL_RUN"
KILL_PARENT = "SIGKILL-parent"
SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP", KILL_PARENT)
EXPECTED_LINE = {"SIGINT": "migconform: interrupted", "SIGTERM": "migconform: terminated by SIGTERM",
                 "SIGHUP": "migconform: terminated by SIGHUP"}
EXPECTED_CODE = {"SIGINT": 130, "SIGTERM": 128 + signal.SIGTERM, "SIGHUP": 128 + signal.SIGHUP}
MEM = "16"


def commands(replay_source: Path) -> dict[str, tuple[list[str], float]]:
    """name -> (arguments with OUT for the target, about how long it runs undisturbed, s)."""
    return {
        "capture": (["capture", "OUT", "--qemu", "7.2", "--dirty", "2", "--mem-mb", MEM], 3.5),
        "capture-channels": (["capture", "OUT", "--qemu", "10.0", "--channels", "2", "--dirty", "2",
                              "--mem-mb", MEM], 4.5),
        "replay": (["replay", str(replay_source), "--qemu", "10.0", "--schedule", "multifd0:chunk=4096,pause=0.002"],
                   5.0),
        "matrix": (["matrix", "--qemu", "7.2", "--qemu", "10.0", "--machines", "pc-i440fx-7.2", "--devices", "none",
                    "--caps", "none", "--mem-mb", MEM, "--workers", "2"], 2.5),
    }


@dataclass
class Run:
    command: str
    signal: str
    delay: float  # seconds after the start (negative: as soon as migconform's handler is installed)
    finished_first: bool = False  # the command ended before the signal was sent
    # sent while the interpreter was still starting (site, runpy), before the first line of
    # migconform installed its handler: CPython's own behaviour (killed, or a traceback)
    before_handler: bool = False
    returncode: int | None = None
    stderr: str = ""
    survivors: list[str] = field(default_factory=list)  # "pid comm" of processes of this run still alive
    leftovers: list[str] = field(default_factory=list)  # temporary files or directories left
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def processes_with(token: str) -> list[str]:
    """Live (not zombie) processes whose environment holds TOKEN_VAR=token."""
    needle = f"{TOKEN_VAR}={token}".encode()
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # gone meanwhile
        comm, state = stat[stat.index("(") + 1: stat.rindex(")")], stat[stat.rindex(")") + 2]
        if state != "Z":
            out.append(f"{pid} {comm}")
    return out


def catches(pid: int, signum: int) -> bool:
    """Whether the process has a handler for `signum` (SigCgt in /proc/PID/status). Python
    itself catches only SIGINT; SIGTERM is caught once migconform's handler is installed."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    except OSError:
        pass
    return False


def leftovers(tmpdir: Path, out: Path) -> list[str]:
    left = [str(p) for p in tmpdir.iterdir()]
    left += [str(p) for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.partial-")]
    if out.exists() and not (out / "manifest.json").is_file():
        left.append(f"{out} (incomplete capture)")
    return left


def _as_from_a_terminal() -> None:
    """In the child before exec: the signals a command started from a shell receives, as they
    are there. A suite run under nohup (or as a background job) passes SIGHUP/SIGINT ignored,
    and migconform rightly keeps an ignored signal ignored."""
    for s in (signal.SIGHUP, signal.SIGINT):
        signal.signal(s, signal.SIG_DFL)


def signal_run(command: str, argv: list[str], sig: str, delay: float, *, grace: float = 10.0) -> Run:
    run = Run(command, sig, delay)
    token = uuid.uuid4().hex
    root = Path(tempfile.mkdtemp(prefix="mcsig-"))
    try:
        tmpdir, out = root / "tmp", root / "out"
        tmpdir.mkdir()
        env = {**os.environ, TOKEN_VAR: token, "TMPDIR": str(tmpdir),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        env.pop("MIGCONFORM_DEBUG", None)
        args = [str(out) if a == "OUT" else a for a in argv]
        proc = subprocess.Popen([sys.executable, "-m", "conformance.cli", *args], env=env, cwd=root,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True, preexec_fn=_as_from_a_terminal)
        try:
            if delay < 0:  # as soon as migconform's handler is in place: its own imports follow
                deadline = time.monotonic() + 30
                while not catches(proc.pid, signal.SIGTERM) and proc.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.0005)
                if proc.poll() is None:
                    raise subprocess.TimeoutExpired(proc.args, 0)
            proc.wait(max(delay, 0))
            run.finished_first = True
        except subprocess.TimeoutExpired:
            run.before_handler = not catches(proc.pid, signal.SIGTERM)
            proc.send_signal(signal.SIGKILL if sig == KILL_PARENT else signal.Signals[sig])
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            run.problems.append("still running 30 s after the signal")
        run.returncode, run.stderr = proc.returncode, err.decode(errors="replace")
        deadline = time.monotonic() + grace
        while (found := processes_with(token)) and time.monotonic() < deadline:
            time.sleep(0.1)
        run.survivors = found
        while (left := leftovers(tmpdir, out)) and time.monotonic() < deadline:
            time.sleep(0.1)  # after SIGKILL the guardian cleans up, a moment later
        run.leftovers = left
        if run.survivors:
            run.problems.append(f"processes left: {', '.join(run.survivors)}")
        for p in processes_with(token):  # do not let a failure poison the next runs
            os.kill(int(p.split()[0]), signal.SIGKILL)
        if run.leftovers:
            run.problems.append(f"left behind: {', '.join(run.leftovers)}")
        if "Traceback" in run.stderr and not run.before_handler:
            run.problems.append("a traceback on stderr")
        if not run.finished_first and sig != KILL_PARENT and not run.before_handler:
            # what a command says it waits for ("listening on ...") and what the matrix says it
            # does (its progress lines, e.g. the KVM probe) come before, as they should
            lines = [ln for ln in run.stderr.strip().splitlines()
                     if not ln.startswith(("migconform: listening on ", "migconform: waiting for ", "matrix: "))]
            if run.returncode != EXPECTED_CODE[sig] or lines != [EXPECTED_LINE[sig]]:
                run.problems.append(f"exit {run.returncode} with stderr {lines[-3:]!r}, "
                                    f"expected {EXPECTED_CODE[sig]} with {EXPECTED_LINE[sig]!r}")
        if run.finished_first and run.returncode not in (0, 1):
            run.problems.append(f"finished undisturbed with exit {run.returncode}: {run.stderr.strip()[-200:]}")
        return run
    finally:
        shutil.rmtree(root, ignore_errors=True)


def make_replay_source(qemu_version: str = "10.0") -> Path:
    """A small multifd capture to replay (made once; its directory is the caller's)."""
    d = Path(tempfile.mkdtemp(prefix="mcsig-src-"))
    p = subprocess.run([sys.executable, "-m", "conformance.cli", "capture", str(d / "cap"), "--qemu", qemu_version,
                        "--channels", "2", "--ram", "3", "--mem-mb", MEM], capture_output=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    if p.returncode != 0:
        raise RuntimeError(f"capture for replay failed: {p.stderr.decode(errors='replace')}")
    return d / "cap"


# ---------------------------------------------------------------- tests

@pytest.fixture(scope="module")
def replay_source(qemu):
    qemu("7.2"), qemu("10.0")
    src = make_replay_source()
    yield src
    shutil.rmtree(src.parent, ignore_errors=True)


def _check(run: Run) -> None:
    assert run.ok, (run.command, run.signal, round(run.delay, 3), run.problems)


@pytest.mark.qemu
@pytest.mark.parametrize("command, sig, fraction", [
    ("capture", "SIGINT", 0.5),
    ("capture-channels", KILL_PARENT, 0.5),
    ("replay", "SIGTERM", 0.4),
    ("matrix", "SIGHUP", 0.5),
])
def test_a_signal_mid_command_leaves_nothing(replay_source, command, sig, fraction):
    argv, seconds = commands(replay_source)[command]
    run = signal_run(command, argv, sig, seconds * fraction)
    assert not run.finished_first, "the command ended before the signal: make it longer"
    _check(run)


@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.parametrize("seed", range(16))
def test_signals_at_random_moments(replay_source, seed):
    rng = random.Random(seed)
    table = commands(replay_source)
    command = sorted(table)[seed % len(table)]
    argv, seconds = table[command]
    _check(signal_run(command, argv, SIGNALS[(seed // len(table)) % len(SIGNALS)], rng.uniform(0.0, seconds)))


@pytest.mark.qemu
def test_an_interrupted_capture_leaves_nothing_and_the_same_command_then_works(qemu, tmp_path):
    qemu("10.0")
    out = tmp_path / "cap"
    argv = [sys.executable, "-m", "conformance.cli", "capture", str(out), "--qemu", "10.0", "--channels", "2",
            "--dirty", "2", "--mem-mb", MEM]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=_as_from_a_terminal)
    deadline = time.monotonic() + 30
    while not any(p.name.startswith(".cap.partial-") for p in tmp_path.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # mid-migration
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 130 and proc.stderr.read().decode() == "migconform: interrupted\n"
    assert list(tmp_path.iterdir()) == []
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["cap"] and (out / "manifest.json").is_file()


def test_sigint_while_waiting_for_a_connection_is_one_line():
    """No QEMU needed: `check tcp:` blocks in accept(); SIGINT there and during start-up."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for delay in (-1, -1, 0.3, 1.5):  # -1: right after the handler is installed, during the imports
        run = signal_run("check", ["check", f"tcp:127.0.0.1:{port}"], "SIGINT", delay, grace=2.0)
        _check(run)
        assert not run.finished_first and not run.before_handler


def test_a_killed_parent_takes_its_children_and_temporary_directories_along(tmp_path):
    """The reaper alone, with a stand-in child: PDEATHSIG kills the child, the guardian
    removes the directory, after a SIGKILL that gave the parent no chance to do either."""
    token = uuid.uuid4().hex
    code = ("import sys, time\n"
            "from conformance.qemu import reaper\n"
            "d = reaper.make_temp_dir('migconform-test-')\n"
            "(d / 'f').write_text('x')\n"
            "reaper.spawn(['sleep', '300'])\n"
            "print(d, flush=True)\n"
            "time.sleep(300)\n")
    env = {**os.environ, TOKEN_VAR: token, "TMPDIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    made = Path(proc.stdout.readline().strip())
    assert made.is_dir() and len(processes_with(token)) == 3  # python, sleep, the guardian
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while (processes_with(token) or made.exists()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_with(token) == [] and not made.exists() and list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- the soak

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", metavar="PATH", help="write every run as JSON")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    source = make_replay_source()
    table = commands(source)
    runs: list[Run] = []
    t0 = time.monotonic()
    try:
        for i in range(a.runs):
            command = sorted(table)[i % len(table)]
            sig = SIGNALS[(i // len(table)) % len(SIGNALS)]
            argv, seconds = table[command]
            run = signal_run(command, argv, sig, rng.uniform(0.0, seconds))
            runs.append(run)
            print(f"{i + 1:4d} {command:<17} {sig:<15} at {run.delay:5.2f} s: exit {run.returncode}"
                  f"{' (finished first)' if run.finished_first else ''}"
                  f"{' (during interpreter start-up)' if run.before_handler else ''}"
                  f"{'' if run.ok else '  PROBLEM: ' + '; '.join(run.problems)}", flush=True)
    finally:
        shutil.rmtree(source.parent, ignore_errors=True)
    survivors = sum(len(r.survivors) for r in runs)
    left = sum(len(r.leftovers) for r in runs)
    bad = [r for r in runs if not r.ok]
    early = [r for r in runs if r.before_handler]
    print(f"{len(runs)} runs in {time.monotonic() - t0:.0f} s ({sum(r.finished_first for r in runs)} finished before "
          f"the signal; {len(early)} signalled during interpreter start-up, before migconform's first line: "
          f"exits {sorted(r.returncode for r in early)}, {sum('Traceback' in r.stderr for r in early)} with "
          f"CPython's traceback): {survivors} surviving processes, {left} leftover temporary files or directories, "
          f"{sum('traceback' in ' '.join(r.problems) for r in runs)} tracebacks, {len(bad)} runs with a problem")
    if a.json:
        Path(a.json).write_text(json.dumps([r.__dict__ for r in runs], indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
