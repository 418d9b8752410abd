"""Large captures from real QEMU for the benchmarks, built on demand and cached under the
project cache (`bench/`), never in the repository.

    main_stream(mem_mb, version)          one main stream of a guest with random RAM
    multifd_capture(mem_mb, version, n)   a directory: main.bin + n multifd channel files
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conformance.qemu import capture_stream, discover  # noqa: E402
from conformance.qemu.binaries import cache_dir  # noqa: E402
from conformance.qemu.devices import make_ram_file  # noqa: E402
from conformance.versions import version_key  # noqa: E402

MACHINE = "pc-i440fx-7.2"  # every modelled version has it


def folder() -> Path:
    f = cache_dir() / "bench"
    f.mkdir(parents=True, exist_ok=True)
    return f


def binary(version: str | None):
    found = discover()
    if not found:
        sys.exit("bench: no QEMU found (run scripts/setup.sh)")
    version = version or max(found, key=version_key)
    if version not in found:
        sys.exit(f"bench: no QEMU {version} found")
    return found[version]


def ram_image(mem_mb: int) -> Path:
    ram = folder() / f"random-{mem_mb}M.ram"
    if not ram.is_file() or ram.stat().st_size != mem_mb << 20:
        print(f"bench: writing {mem_mb} MiB of random guest RAM", file=sys.stderr)
        make_ram_file(ram, mem_mb, seed=1)
    return ram


def main_stream(mem_mb: int, version: str | None = None) -> Path:
    b = binary(version)
    stream = folder() / f"random-{mem_mb}M-qemu-{b.full_version}.mig"
    if stream.is_file() and stream.stat().st_size > mem_mb << 20:
        return stream
    ram = ram_image(mem_mb)
    print(f"bench: capturing a {mem_mb} MiB guest from QEMU {b.full_version}", file=sys.stderr)
    capture_stream(b, stream, machine=MACHINE, mem_mb=mem_mb, ram_file=ram, timeout=1800)
    return stream


def multifd_capture(mem_mb: int, version: str | None = None, channels: int = 4) -> Path:
    """main.bin + multifd<id>.bin of a real multifd migration (source and destination of the
    same version, over loopback TCP through the recording proxy)."""
    from conformance.qemu.tcp_migration import capture_channels

    b = binary(version)
    out = folder() / f"multifd{channels}-{mem_mb}M-qemu-{b.full_version}"
    files = [out / "main.bin"] + [out / f"multifd{i}.bin" for i in range(channels)]
    if all(f.is_file() for f in files) and sum(f.stat().st_size for f in files) > mem_mb << 20:
        return out
    ram = ram_image(mem_mb)
    print(f"bench: capturing a {mem_mb} MiB guest over {channels} multifd channels from QEMU {b.full_version}",
          file=sys.stderr)
    cap = capture_channels(b, b, machine=MACHINE, mem_mb=mem_mb, ram_file=ram, dst_ram_file=ram,
                           capabilities={"multifd": True}, parameters={"multifd-channels": channels},
                           timeout=1800, record_limit=2 * (mem_mb << 20))
    if cap.destination_status != "completed" or len(cap.multifd) != channels:
        sys.exit(f"bench: multifd capture did not complete ({cap.destination_status}, {len(cap.multifd)} channels)")
    out.mkdir(exist_ok=True)
    (out / "main.bin").write_bytes(cap.main)
    for cid, data in cap.multifd.items():
        (out / f"multifd{cid}.bin").write_bytes(data)
    return out


if __name__ == "__main__":
    print(multifd_capture(int(sys.argv[1]) if len(sys.argv) > 1 else 2048))
