"""`migconform capture` and `migconform replay`: their options; the work is tools/capture.py's."""

from __future__ import annotations

from conformance.qemu.devices import DEVICE_SETS
from conformance.qemu.guests import GUESTS
from conformance.tools.sides import add_options


def cmd_capture(args) -> int:
    from conformance.tools.capture import cmd_capture as run  # the QEMU machinery: only when it runs

    return run(args)


def cmd_replay(args) -> int:
    from conformance.tools.capture import cmd_replay as run

    return run(args)


def add_capture_parser(sub) -> None:
    c = sub.add_parser("capture", help="record a real QEMU source's migration stream into a capture directory")
    c.add_argument("out", help="capture directory to create")
    c.add_argument("--qemu", default=None, metavar="VERSION", help="source version (default: newest found)")
    c.add_argument("--qemu-path", action="append", metavar="VERSION=PATH", help="use this binary for VERSION")
    c.add_argument("--machine", default="pc-i440fx-7.2")
    c.add_argument("--devices", default="none", metavar="SET",
                   help=f"device set: {', '.join(DEVICE_SETS)}, or one of --devices-file (default none)")
    c.add_argument("--devices-file", metavar="FILE",
                   help="named device sets of your own, TOML or JSON (see conformance/tools/devsets.py)")
    c.add_argument("--device", dest="device", action="append", default=[], metavar="DRIVER[,PROP=VALUE]",
                   help="a -device of your own, after the set's (repeatable, QEMU syntax; no file names, no "
                   "host backends)")
    c.add_argument("--mem-mb", type=int, default=64, help="guest RAM in MiB (default 64; the linux guest needs 128, its default)")
    c.add_argument("--ram", default="zero", metavar="zero|random|SEED|FILE",
                   help="guest RAM content: zero (a fresh guest), random (seeded), or a file of exactly --mem-mb MiB")
    c.add_argument("--cap", action="append", metavar="NAME[=on|off]", help="migration capability (repeatable)")
    c.add_argument("--param", action="append", metavar="NAME=VALUE", help="migration parameter (repeatable)")
    c.add_argument("--global", dest="globals_", action="append", metavar="DRIVER.PROP=VALUE", help="-global for both sides (repeatable)")
    add_options(c)
    c.add_argument("--guest", default=None, choices=GUESTS,
                   help="paused (default), dirtier (what --dirty boots), or devices (a boot program of ours that "
                   "programs PIC, PIT, RTC, serial, keyboard controller and DMA, dirties RAM and counts a heartbeat), "
                   "or linux (Debian's kernel and an initramfs of ours loading every device's driver, with a "
                   "heartbeat on its serial port; scripts/setup.sh fetches it)")
    c.add_argument("--channels", type=int, default=0, metavar="N",
                   help="migrate over TCP with multifd and N channels to a real destination, recording every channel")
    c.add_argument("--dest", default=None, metavar="VERSION", help="destination version for --channels (default: the source's)")
    c.add_argument("--dirty", type=float, default=None, metavar="SECONDS",
                   help="boot a guest that keeps dirtying 112 pages, keep the migration from "
                   "converging (1 MiB/s, downtime-limit 1 ms) for SECONDS, then stop the guest: several dirty-sync rounds")
    c.add_argument("--record-limit", type=int, default=256, metavar="MIB",
                   help="with --channels: bytes recorded per connection, held in memory (default 256 MiB); "
                   "a longer channel fails the capture instead of cutting it")
    c.add_argument("--timeout", type=float, default=120.0)
    c.set_defaults(func=cmd_capture)

    r = sub.add_parser("replay", help="play a capture directory into a real destination, one connection per channel")
    r.add_argument("capture", help="capture directory (made by migconform capture)")
    r.add_argument("--qemu", default=None, metavar="VERSION", help="destination version (default: newest found)")
    r.add_argument("--qemu-path", action="append", metavar="VERSION=PATH")
    r.add_argument("--schedule", default="", metavar="SPEC",
                   help="delivery per channel, e.g. 'multifd1:chunk=4096,pause=0.001;main:delay=0.1' (default: all at once)")
    r.add_argument("--timeout", type=float, default=30.0, help="seconds before a destination that has not finished counts as hung")
    r.add_argument("--json", action="store_true")
    add_options(r, source=False)
    r.set_defaults(func=cmd_replay)
