"""How the `migconform` command ends on SIGINT, SIGTERM and SIGHUP: at once, at any moment
(start-up included), with one line and no traceback.

Unwinding with an exception cannot promise that: it can land inside an asyncio loop (the QMP
client's tasks then complain when collected), a worker pool or a `finally` that waits. So the
handler does the clean-up itself - every QEMU process group migconform started and every
temporary directory it made, as conformance.qemu.reaper records them - and exits with
os._exit: 130 for SIGINT (Ctrl-C), 128 + the signal's number otherwise.

Imports nothing of migconform: it is installed before the rest of the command line is
imported, and finds the reaper only if something loaded it (no QEMU started, nothing to do).
"""

import os
import signal
import sys

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
REAPER = "conformance.qemu.reaper"


def exit_code(signum: int) -> int:
    return 130 if signum == signal.SIGINT else 128 + signum


def _on_signal(signum: int, frame: object) -> None:
    for s in SIGNALS:  # a second Ctrl-C while we clean up must not print a second line
        signal.signal(s, signal.SIG_IGN)
    reaper = sys.modules.get(REAPER)
    if reaper is not None:
        try:
            reaper.emergency_cleanup()
        except BaseException:  # the guardian process still removes what we could not
            pass
    what = "interrupted" if signum == signal.SIGINT else f"terminated by {signal.Signals(signum).name}"
    try:
        os.write(2, f"migconform: {what}\n".encode())
    except OSError:
        pass
    os._exit(exit_code(signum))


def install() -> None:
    """Take SIGINT, SIGTERM and SIGHUP for the rest of this process (main thread only)."""
    for s in SIGNALS:
        # ignored when we started (nohup; a background job's SIGINT): stays ignored, as it should
        if s == signal.SIGTERM or signal.getsignal(s) is not signal.SIG_IGN:
            signal.signal(s, _on_signal)


def started_as_command() -> bool:
    """True when this process is the `migconform` command (its console script, or
    `python -m conformance.cli`), not a program or test that imports the package."""
    if os.path.basename(sys.argv[0]) in ("migconform", "migconform.exe"):
        return True
    argv = getattr(sys, "orig_argv", [])
    return "-m" in argv[:-1] and argv[argv.index("-m") + 1] == "conformance.cli"
