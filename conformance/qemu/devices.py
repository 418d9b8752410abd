"""Named device sets and guest-RAM helpers, as QEMU arguments valid for 7.2 and 10.0 on
both pc (i440fx) and q35 machines. Nothing here needs host set-up (no tap, no images)."""

from __future__ import annotations

import random
from pathlib import Path

# Fixed MACs: QEMU derives defaults from a global counter, and stable streams are easier to diff.
_DEVICE_SETS: dict[str, tuple[str, ...]] = {
    "none": (),
    "virtio-net+virtio-blk": (
        # a hub port with no host side: no slirp section in the stream, no host set-up
        # (QEMU warns "hub 0 is not connected to host network" on stderr)
        "-netdev", "hubport,id=net0,hubid=0",
        "-device", "virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56",
        "-blockdev", "driver=null-co,node-name=disk0,size=67108864,read-zeroes=on",
        "-device", "virtio-blk-pci,drive=disk0",
    ),
    "e1000+usb": (
        "-netdev", "hubport,id=net1,hubid=1",
        "-device", "e1000,netdev=net1,mac=52:54:00:12:34:57",
        # qemu-xhci exists on both machine families (piix/ich9 UHCI do not)
        "-device", "qemu-xhci,id=xhci",
        "-device", "usb-tablet,bus=xhci.0",
    ),
}

DEVICE_SETS: tuple[str, ...] = tuple(_DEVICE_SETS)


def device_args(name: str) -> list[str]:
    try:
        return list(_DEVICE_SETS[name])
    except KeyError:
        raise ValueError(f"unknown device set {name!r} (known: {', '.join(DEVICE_SETS)})") from None


def qemu_opt_value(text: str) -> str:
    """Escape a value for QEMU's key=value option syntax (a comma is written twice)."""
    return text.replace(",", ",,")


def make_ram_file(path: Path | str, mem_mb: int, *, seed: int | None = 0, content: bytes | None = None) -> Path:
    """Write a guest-RAM image of exactly mem_mb MiB: `content` padded with zeros, or else
    pseudo-random bytes from `seed` (the same seed gives the same bytes)."""
    path = Path(path)
    size = mem_mb << 20
    if content is not None:
        if len(content) > size:
            raise ValueError(f"content is {len(content)} bytes, more than {mem_mb} MiB")
        with open(path, "wb") as f:
            f.write(content)
            f.truncate(size)  # sparse zero tail
    else:
        rng = random.Random(seed)
        with open(path, "wb") as f:
            for _ in range(mem_mb):
                f.write(rng.randbytes(1 << 20))
    return path


def ram_args(ram_file: Path | str, mem_mb: int) -> list[str]:
    """Back guest RAM with a private mapping of `ram_file` (the guest sees its content; the
    file is never written: share=off). Pass `-m {mem_mb}M` too: QEMU requires the sizes to match."""
    return [
        "-object", f"memory-backend-file,id=ram0,size={mem_mb}M,mem-path={qemu_opt_value(str(ram_file))},share=off",
        "-machine", "memory-backend=ram0",
    ]


# A boot sector that writes one byte of every 4 KiB page from 0x20000 to 0x8ffff, round and
# round, for ever (16-bit real mode, our own code): a running guest that keeps dirtying 112
# pages, so that a bandwidth-limited migration needs several dirty-sync rounds.
DIRTIER_BOOT_SECTOR = bytes.fromhex(
    "fa"            # cli
    "bb0020"        # mov bx, 0x2000       ; first segment (0x20000)
    "8ec3"          # mov es, bx
    "26fe060000"    # inc byte [es:0]
    "81c30001"      # add bx, 0x100        ; next 4 KiB
    "81fb0090"      # cmp bx, 0x9000
    "72ef"          # jb mov es, bx
    "ebea"          # jmp mov bx, 0x2000
)


def make_dirtier_disk(path: Path | str) -> Path:
    """A 1 MiB raw disk whose MBR is DIRTIER_BOOT_SECTOR (SeaBIOS boots it)."""
    path = Path(path)
    sector = DIRTIER_BOOT_SECTOR + bytes(510 - len(DIRTIER_BOOT_SECTOR)) + b"\x55\xaa"
    path.write_bytes(sector + bytes((1 << 20) - 512))
    return path


def dirtier_args(disk: Path | str) -> list[str]:
    return ["-drive", f"file={qemu_opt_value(str(disk))},format=raw,if=ide,index=0,snapshot=on"]
