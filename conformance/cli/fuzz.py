"""`migconform fuzz`: its options; the work is tools/fuzz's."""

from __future__ import annotations

from conformance.qemu.devices import DEVICE_SETS


def cmd_fuzz(args) -> int:
    from conformance.tools.fuzz.command import cmd_fuzz as run  # hypothesis, QMP: only when it runs

    return run(args)


def add_fuzz_parser(sub) -> None:
    f = sub.add_parser("fuzz", help="structure-aware fuzzing of real QEMU destinations and the reference loader")
    f.add_argument("--qemu", metavar="VERSION", help="destination version (its seed is captured from the same binary)")
    f.add_argument("--machine", default="pc", help="machine type of the seed and the destination (default: pc)")
    f.add_argument("--devices", default="virtio-net+virtio-blk", choices=DEVICE_SETS, help="device set of the seed")
    f.add_argument("--channels", type=int, metavar="N",
                   help="fuzz a multifd migration with N channels: the seed is a multifd capture, the destination "
                        "has multifd on and N channels, fed over loopback (default: a lone main stream)")
    f.add_argument("--guest", default="paused", choices=("paused", "dirtier", "devices"),
                   help="the seed's guest: paused (default), or a boot program of ours run until its heartbeat "
                   "moves and migrated running (devices: PIC, PIT, RTC, serial, 8042 and DMA programmed)")
    f.add_argument("--time", default="10m", help="how long to fuzz: 30s, 10m, 2h (default: 10m)")
    f.add_argument("--jobs", type=int, default=2, metavar="N", help="destinations kept started ahead of need (default: 2)")
    f.add_argument("--findings", metavar="DIR", help="where findings, the seed and the example database are kept")
    f.add_argument("--target", choices=("real", "loader", "both"), default="both",
                   help="real QEMU, the reference loader, or both (disagreements are findings; default)")
    f.add_argument("--redis", metavar="URL", help="share the example database through Redis (hypothesis[redis])")
    f.add_argument("--corpus-only", action="store_true",
                   help="run only the inputs already in the example database (e.g. a shared corpus against another build)")
    f.add_argument("--max-edits", type=int, default=3, metavar="N", help="edits per input (default: 3)")
    f.add_argument("--exec-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="a load not finished by then is a hang (default: 10)")
    f.add_argument("--memory-mb", type=int, default=4096, metavar="MB",
                   help="address space a destination may add while loading (default: 4096)")
    f.add_argument("--progress-every", type=float, default=5.0, metavar="SECONDS", help=argparse_suppress())
    f.add_argument("--replay", metavar="FINDING.json", help="run one saved finding again and compare its verdict")
    f.set_defaults(func=cmd_fuzz)


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS
