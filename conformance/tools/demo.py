"""`migconform demo`, the built-in default job: capture a stream from each installed QEMU,
judge it as every modelled destination version would, and load it into every installed
real destination to show that the verdicts agree.

A small matrix: its cells are (source version, destination version, machine type) with one
device set and no capability, captured and loaded by the matrix's own store and cell runner;
what the demo adds is the checker's full report for every modelled destination."""

from __future__ import annotations

from typing import Callable

from conformance.check.judge import judge_path
from conformance.qemu import QemuNotFound, discover, machine_types, reaper
from conformance.rules.profile import PROFILES, configure
from conformance.tools.matrix.cell import load_cell
from conformance.tools.matrix.grid import CellSpec
from conformance.tools.matrix.store import CaptureStore
from conformance.versions import VERSIONS, version_key

EXIT_OK, EXIT_DISAGREE, EXIT_ERROR = 0, 1, 2
CAPTURE_TIMEOUT, LOAD_TIMEOUT = 60.0, 30.0  # seconds


def run_demo(pairs: dict, *, machine: str, devices: str, mem_mb: int, report: Callable) -> int:
    try:
        found = discover(pairs)
    except QemuNotFound as e:
        print(f"migconform: error: {e}")
        return EXIT_ERROR
    if not found:
        print("migconform: error: no QEMU found: run scripts/setup.sh or pass --qemu VERSION=PATH")
        return EXIT_ERROR
    versions = sorted(found, key=version_key)
    worst = EXIT_OK
    agree = disagree = 0
    with reaper.temporary_directory("migconform-demo-") as tmp:
        store = CaptureStore(tmp, found, mem_mb=mem_mb, timeout=CAPTURE_TIMEOUT)
        for version in versions:
            binary = found[version]
            # the shared machine type, and this version's newest (which older ones lack)
            newest = max((m for m in machine_types(binary) if m.startswith("pc-i440fx-")),
                         key=lambda m: version_key(m.rsplit("-", 1)[1]))
            for mach in dict.fromkeys([machine, newest]):
                print(f"== QEMU {binary.full_version} source, {mach}, {mem_mb} MiB, devices {devices}", flush=True)
                cap = store.get((version, mach, devices, "none"))
                if cap.path is None:
                    print(f"   capture failed: {cap.outcome.message if cap.outcome else 'no stream'}")
                    worst = EXIT_ERROR
                    continue
                print(f"   captured {cap.size} bytes in {cap.seconds:.2f} s")
                for target in sorted(PROFILES, key=version_key):
                    # check's own judge (its defaults: the built-in destination tables), for a
                    # destination of that version started with the stream's machine type
                    rep = judge_path(str(cap.path), configure(target, machine=mach))
                    rep.source = f"qemu-{version}-{mach}.mig"
                    print("\n".join(("   " + line).rstrip() for line in report(rep).splitlines()))
                    if target not in found:
                        continue
                    if mach not in machine_types(found[target]):
                        print(f"   real QEMU {found[target].full_version} has no machine type {mach}: "
                              "it cannot start a destination for this stream at all")
                        continue
                    real = load_cell(CellSpec(version, target, mach, devices, "none"), store, cap.path,
                                     timeout=LOAD_TIMEOUT)
                    said = "completed" if real.ok else f"failed: {real.message}"
                    same = real.ok == (not rep.rejected)
                    agree += same
                    disagree += not same
                    print(f"   real QEMU {found[target].full_version} destination: {said}"
                          f"  -> {'agrees' if same else 'DISAGREES'} with the model")
                    if not same:
                        worst = max(worst, EXIT_DISAGREE)
                print(flush=True)
    print(f"{agree} verdicts agree with real destinations, {disagree} disagree")
    return worst
