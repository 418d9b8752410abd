"""`migconform demo`, the built-in default job: capture a stream from each installed QEMU,
judge it as every modelled destination version would, and load it into every installed
real destination to show that the verdicts agree."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from conformance.check.pipeline import check_stream
from conformance.qemu import QemuError, QemuNotFound, capture_stream, discover, load_stream, machine_types, reaper
from conformance.rules.profile import PROFILES

EXIT_OK, EXIT_DISAGREE, EXIT_ERROR = 0, 1, 2


def _vkey(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split("."))


def run_demo(pairs: dict, *, machine: str, devices: str, mem_mb: int, body_checker: Callable | None,
             body_sizer: Callable, report: Callable) -> int:
    try:
        found = discover(pairs)
    except QemuNotFound as e:
        print(f"migconform: error: {e}")
        return EXIT_ERROR
    if not found:
        print("migconform: error: no QEMU found: run scripts/setup.sh or pass --qemu VERSION=PATH")
        return EXIT_ERROR
    versions = sorted(found, key=_vkey)
    worst = EXIT_OK
    agree = disagree = 0
    with reaper.temporary_directory("migconform-demo-") as tmp:
        for version in versions:
            binary = found[version]
            # the shared machine type, and this version's newest (which older ones lack)
            newest = max((m for m in machine_types(binary) if m.startswith("pc-i440fx-")),
                         key=lambda m: _vkey(m.rsplit("-", 1)[1]))
            for mach in dict.fromkeys([machine, newest]):
                out = Path(tmp) / f"qemu-{version}-{mach}.mig"
                print(f"== QEMU {binary.full_version} source, {mach}, {mem_mb} MiB, devices {devices}", flush=True)
                try:
                    cap = capture_stream(binary, out, machine=mach, mem_mb=mem_mb, devices=devices)
                except QemuError as e:
                    print(f"   capture failed: {e}")
                    worst = EXIT_ERROR
                    continue
                print(f"   captured {cap.size} bytes in {cap.duration:.2f} s")
                for target in sorted(PROFILES, key=_vkey):
                    with open(out, "rb") as f:
                        rep = check_stream(f, name=out.name, target=target, body_checker=body_checker,
                                           body_sizer=body_sizer(str(out)), machine=mach)
                    print("\n".join(("   " + line).rstrip() for line in report(rep).splitlines()))
                    if target not in found:
                        continue
                    if mach not in machine_types(found[target]):
                        print(f"   real QEMU {found[target].full_version} has no machine type {mach}: "
                              "it cannot start a destination for this stream at all")
                        continue
                    real = load_stream(found[target], out, machine=mach, devices=devices, mem_mb=mem_mb)
                    errors = [line for line in real.error_lines if not line.startswith("warning:")]
                    said = "completed" if real.completed else f"failed: {errors[0] if errors else real.status}"
                    same = real.completed == (not rep.rejected)
                    agree += same
                    disagree += not same
                    print(f"   real QEMU {found[target].full_version} destination: {said}"
                          f"  -> {'agrees' if same else 'DISAGREES'} with the model")
                    if not same:
                        worst = max(worst, EXIT_DISAGREE)
                print(flush=True)
    print(f"{agree} verdicts agree with real destinations, {disagree} disagree")
    return worst
