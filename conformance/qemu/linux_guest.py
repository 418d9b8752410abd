"""The real Linux guest (`--guest linux`): Debian's kernel booted with -kernel/-initrd and an
initramfs of ours (busybox-static, the kernel's driver modules, our /init), no disk image and no
network.

scripts/setup.sh downloads the Debian packages (linux-image-<abi>-amd64, busybox-static) into
the project cache and unpacks them into LINUX_DIR/tree; `build()` (python -m
conformance.qemu.linux_guest) then writes LINUX_DIR/vmlinuz and LINUX_DIR/initrd.gz. A guest
asked for when only the tree is there builds them itself.

/init (INIT_SCRIPT, busybox sh) loads every driver in DRIVERS with its dependencies (insmod in
dependency order, computed here from each module's `depends=` modinfo field: the package has
no modules.dep), brings every NIC up, reads every disk and CD, then for ever dirties a tmpfs
buffer and prints `migconform-heartbeat N` on the serial port. The host reads that port
through a `ringbuf` chardev (QMP ringbuf-read): each QEMU process has its own, so a
destination's output is its own and both ends keep the same command line.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import shutil
import stat
import sys
import threading
from pathlib import Path

from conformance.qemu.binaries import cache_dir
from conformance.qemu.devices import qemu_opt_value

# Driver modules of every device the device sets (ours and a user's usual ones) can hold.
# Missing modules are skipped with a note: the list names what to load, not what must exist.
DRIVERS: tuple[str, ...] = (
    "virtio_pci", "virtio_net", "virtio_blk", "virtio-rng", "virtio_balloon", "virtio_console", "virtio_scsi",
    "e1000", "e1000e", "8139cp", "8139too", "ne2k-pci", "pcnet32",
    "ahci", "ata_piix", "ata_generic", "sd_mod", "sr_mod",
    "ehci-pci", "uhci-hcd", "xhci-pci", "usbhid", "hid-generic", "usb-storage",
    "sym53c8xx", "megaraid_sas", "mptspi",
    "bochs", "cirrus", "virtio-gpu",
    "i6300esb",
)

SERIAL_ID = "migconform-ttyS0"  # the ringbuf chardev behind the guest's COM1
RINGBUF_BYTES = 1 << 16
HEARTBEAT = re.compile(rb"migconform-heartbeat (\d+)")
READY = b"migconform-linux ready"
MIN_MEM_MB = 128  # the kernel, the unpacked initramfs and the dirty buffer
KERNEL_APPEND = "console=ttyS0 panic=-1 quiet loglevel=4 nokaslr"

INIT_SCRIPT = r"""#!/bin/sh
# migconform Linux guest: load drivers, exercise the devices, then heartbeat for ever.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o size=16m tmpfs /scratch
echo "migconform-linux init"
while read -r mod; do
  insmod "/modules/$mod" 2>/dev/null || true
done < /modules/order
sleep 1
echo "migconform-linux modules: $(cut -d' ' -f1 /proc/modules | sort | tr '\n' ' ')"
for nic in /sys/class/net/*; do
  n=${nic##*/}
  ip link set "$n" up && echo "migconform-linux nic $n up"
done
for d in /sys/block/vd* /sys/block/sd* /sys/block/sr* /sys/block/hd*; do
  [ -e "$d" ] || continue
  n=${d##*/}
  # an empty CD-ROM has no medium: its read fails, and says so
  dd if="/dev/$n" of=/dev/null bs=64k count=16 2>/dev/null && echo "migconform-linux read $n" \
    || echo "migconform-linux read $n: no data"
done
[ -e /dev/hwrng ] && dd if=/dev/hwrng of=/dev/null bs=16 count=1 2>/dev/null && echo "migconform-linux hwrng read"
echo "migconform-linux ready"
n=0
while :; do
  n=$((n + 1))
  # dirty 4 MiB of tmpfs each round, with changing content
  dd if=/dev/urandom of=/scratch/dirty bs=64k count=64 conv=notrunc 2>/dev/null
  echo "migconform-heartbeat $n"
  usleep 100000
done
"""


def linux_dir() -> Path:
    return cache_dir() / "linux-guest"


class LinuxGuestMissing(RuntimeError):
    pass


def _modinfo(ko: bytes) -> dict[str, str]:
    """The `key=value` strings of a module's .modinfo section (found by their prefix)."""
    out = {}
    for key in (b"depends=", b"name="):
        m = re.search(b"\0" + key + rb"([^\0]*)\0", ko)
        if m:
            out[key[:-1].decode()] = m[1].decode()
    return out


def module_order(modroot: Path, wanted: tuple[str, ...] = DRIVERS) -> tuple[list[Path], list[str]]:
    """(modules to insmod in dependency order, wanted names not found)."""
    index: dict[str, Path] = {}
    for p in modroot.rglob("*.ko"):
        index[p.stem.replace("-", "_")] = p
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str, depth: int = 0) -> None:
        name = name.replace("-", "_")
        if name in seen or name not in index or depth > 64:
            return
        seen.add(name)
        for dep in filter(None, _modinfo(index[name].read_bytes()).get("depends", "").split(",")):
            visit(dep, depth + 1)
        order.append(index[name])

    missing = [w for w in wanted if w.replace("-", "_") not in index]
    for w in wanted:
        visit(w)
    return order, missing


def _cpio_entry(out: io.BufferedIOBase, name: str, mode: int, data: bytes = b"", ino: int = 0) -> None:
    """One newc entry (the format the kernel unpacks: 'initramfs-format' in its docs)."""
    nameb = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nameb), 0)
    out.write(b"070701" + b"".join(b"%08X" % f for f in fields) + nameb)
    out.write(b"\0" * (-(110 + len(nameb)) % 4))
    out.write(data)
    out.write(b"\0" * (-len(data) % 4))


def build_initramfs(tree: Path, out: Path) -> tuple[int, list[str]]:
    """Write the gzip'ed newc initramfs from the unpacked packages in `tree`; returns
    (modules included, wanted drivers not found)."""
    mods = sorted((tree / "lib" / "modules").iterdir())
    if not mods:
        raise LinuxGuestMissing(f"{tree}: no lib/modules")
    order, missing = module_order(mods[-1] / "kernel")
    busybox = (tree / "bin" / "busybox").read_bytes()
    raw = io.BytesIO()
    ino = 1
    for d in ("bin", "dev", "proc", "sys", "scratch", "modules"):
        _cpio_entry(raw, d, stat.S_IFDIR | 0o755, ino=ino)
        ino += 1
    _cpio_entry(raw, "bin/busybox", stat.S_IFREG | 0o755, busybox, ino)
    _cpio_entry(raw, "bin/sh", stat.S_IFLNK | 0o777, b"busybox", ino + 1)
    _cpio_entry(raw, "init", stat.S_IFREG | 0o755, INIT_SCRIPT.encode(), ino + 2)
    ino += 3
    for p in order:
        _cpio_entry(raw, f"modules/{p.name}", stat.S_IFREG | 0o644, p.read_bytes(), ino)
        ino += 1
    _cpio_entry(raw, "modules/order", stat.S_IFREG | 0o644, "".join(f"{p.name}\n" for p in order).encode(), ino)
    _cpio_entry(raw, "TRAILER!!!", 0)
    # processes and threads building at once each write a file of their own
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", compresslevel=6, mtime=0) as z:
        z.write(raw.getvalue())
    tmp.replace(out)
    return len(order), missing


def build(root: Path | None = None) -> tuple[Path, Path]:
    """(vmlinuz, initrd.gz) in `root` (default linux_dir()), built from root/tree when missing
    or older than this module (its /init changed)."""
    root = root or linux_dir()
    tree = root / "tree"
    kernel, initrd = root / "vmlinuz", root / "initrd.gz"
    if not tree.is_dir():
        raise LinuxGuestMissing(f"no Linux guest in {root}: run scripts/setup.sh")
    me = Path(__file__).stat().st_mtime
    if not kernel.is_file():
        found = sorted((tree / "boot").glob("vmlinuz-*"))
        if not found:
            raise LinuxGuestMissing(f"{tree}/boot: no vmlinuz")
        tmp = kernel.with_name(f".vmlinuz.{os.getpid()}.{threading.get_ident()}.tmp")
        shutil.copyfile(found[-1], tmp)
        tmp.replace(kernel)
    if not initrd.is_file() or initrd.stat().st_mtime < me:
        build_initramfs(tree, initrd)
    return kernel, initrd


def qemu_args(kernel: Path, initrd: Path) -> tuple[str, ...]:
    """Boot arguments, the same on both ends; the serial port goes to a ringbuf of the process."""
    return ("-chardev", f"ringbuf,id={SERIAL_ID},size={RINGBUF_BYTES}",
            "-device", f"isa-serial,chardev={SERIAL_ID},iobase=0x3f8,irq=4",
            "-kernel", qemu_opt_value(str(kernel)), "-initrd", qemu_opt_value(str(initrd)),
            "-append", KERNEL_APPEND)


_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x08\x0b-\x1f\x7f]")


class SerialReader:
    """The guest's serial output so far, read through QMP ringbuf-read (which consumes it)."""

    def __init__(self, q) -> None:
        self.q = q
        self.text = bytearray()

    def read(self, timeout: float | None = None) -> bytes:
        """Everything read so far; `timeout` bounds the QMP command (default: the process's)."""
        got = self.q.cmd("ringbuf-read", device=SERIAL_ID, size=RINGBUF_BYTES, format="utf8", timeout=timeout)
        self.text += got.encode("utf-8", "replace")
        return self.text

    def last_line(self) -> str:
        """The last non-empty line read so far (at most 100 characters), '' when there is none."""
        text = _CONTROL.sub("", bytes(self.text).decode("utf-8", "replace"))  # a shell's terminal queries
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        return lines[-1][-100:] if lines else ""

    def last_heartbeat(self, timeout: float | None = None) -> int | None:
        beats = HEARTBEAT.findall(bytes(self.read(timeout)))
        return int(beats[-1]) if beats else None


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else linux_dir()
    try:
        kernel, initrd = build(root)
    except (LinuxGuestMissing, OSError) as e:
        print(f"linux_guest: {e}", file=sys.stderr)
        return 1
    mods = len(module_order(sorted((root / "tree" / "lib" / "modules").iterdir())[-1] / "kernel")[0])
    print(f"linux_guest: {kernel} and {initrd} ({os.path.getsize(initrd) >> 10} KiB, {mods} modules)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
