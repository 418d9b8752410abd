"""The guardian: a small process that outlives migconform just long enough to clean up.

Run as a script (`python -I guardian.py`), never imported by the package: it needs only the
standard library and must start in milliseconds. migconform writes one line per change to its
stdin, a pipe only migconform holds:

    +g PGID   a process group to kill          -g PGID   forget it (reaped already)
    +d HEX    a directory to remove (path      -d HEX    forget it (removed or renamed)
              bytes, hex-encoded)

When the pipe ends - migconform exited, whatever the way, SIGKILL included - it kills every
process group still registered and removes every directory, then exits. migconform's own
clean-up (conformance.qemu.reaper) normally leaves nothing for it to do.
"""

import os
import shutil
import signal
import sys
import time


def main() -> None:
    # in its own session already; a terminal's Ctrl-C or hang-up is for migconform, not for us
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    groups: set[int] = set()
    dirs: set[bytes] = set()
    for line in sys.stdin.buffer:
        op, _, arg = line.strip().partition(b" ")
        try:
            if op == b"+g":
                groups.add(int(arg))
            elif op == b"-g":
                groups.discard(int(arg))
            elif op == b"+d":
                dirs.add(bytes.fromhex(arg.decode()))
            elif op == b"-d":
                dirs.discard(bytes.fromhex(arg.decode()))
        except ValueError:
            continue  # a torn line cannot happen (one write each); ignore rather than die
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass
    for attempt in range(20):  # a group dies asynchronously: a last file may still appear
        for d in list(dirs):
            shutil.rmtree(d, ignore_errors=True)
            if not os.path.lexists(d):
                dirs.discard(d)
        if not dirs:
            break
        time.sleep(0.05)


if __name__ == "__main__":
    main()
