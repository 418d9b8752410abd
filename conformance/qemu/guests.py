"""Guests of ours for a cell or a capture, chosen by name (`--guest`):

* ``paused``: the guest never runs (-S); device state is reset values. Fast.
* ``dirtier``: devices.DIRTIER_BOOT_SECTOR, a boot sector that only dirties RAM.
* ``devices``: DEVICES_BOOT_SECTOR below, a boot sector that programs the devices QEMU
  migrates (PIC incl. ELCR level/edge, PIT, RTC/CMOS, 16550 serial, keyboard controller
  command byte, DMA), then dirties RAM for ever and counts a heartbeat.
* ``linux``: Debian's kernel with an initramfs of ours (conformance.qemu.linux_guest): loads
  the drivers of every device, brings NICs up, reads disks, dirties a buffer and prints a
  heartbeat on its serial port, which the host reads (not RAM: a ringbuf chardev per process).

The boot sector is built here from readable source: a table of port writes (data) and a few
instructions, each encoded by a one-line helper with its mnemonic beside it. No HPET: its
registers are MMIO at 0xfed00000, out of reach of 16-bit real mode without an unreal-mode
switch, which this first slice does not do.

A running guest's heartbeat is read with the monitor's `xp` (no file): `devices` increments
the dword at HEARTBEAT_ADDR once per sweep of its dirty pages; `dirtier` has no counter of
its own, the byte it increments at 0x20000 stands for one (it wraps at 256, so it is read
several times).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from conformance.qemu import linux_guest
from conformance.qemu.devices import DIRTIER_BOOT_SECTOR, qemu_opt_value
from conformance.qemu.process import QemuTimeout

GUESTS: tuple[str, ...] = ("paused", "dirtier", "devices", "linux")

HEARTBEAT_ADDR = 0x5000  # guest-physical, a dword below the boot sector (0x7c00)
DIRTY_FIRST, DIRTY_END, PAGE = 0x20000, 0x90000, 0x1000  # the pages both boot sectors dirty

# ------------------------------------------------------------------ the tiny assembler
# 16-bit real mode encodings (Intel SDM vol. 2); each returns the instruction's bytes.


def _w(v: int) -> bytes:
    return (v & 0xFFFF).to_bytes(2, "little")


def mov_al(v: int) -> bytes: return b"\xb0" + bytes([v])            # mov al, imm8
def mov_dx(v: int) -> bytes: return b"\xba" + _w(v)                 # mov dx, imm16
def mov_bx(v: int) -> bytes: return b"\xbb" + _w(v)                 # mov bx, imm16
def mov_sp(v: int) -> bytes: return b"\xbc" + _w(v)                 # mov sp, imm16
def out_imm(port: int) -> bytes: return b"\xe6" + bytes([port])     # out imm8, al
def in_imm(port: int) -> bytes: return b"\xe4" + bytes([port])      # in al, imm8
def test_al(v: int) -> bytes: return b"\xa8" + bytes([v])           # test al, imm8
def add_bx(v: int) -> bytes: return b"\x81\xc3" + _w(v)             # add bx, imm16
def cmp_bx(v: int) -> bytes: return b"\x81\xfb" + _w(v)             # cmp bx, imm16
def inc_dword(addr: int) -> bytes: return b"\x66\xff\x06" + _w(addr)  # inc dword [ds:addr]


CLI = b"\xfa"                  # cli: no interrupt is ever serviced (nothing to service them)
XOR_AX_AX = b"\x31\xc0"        # xor ax, ax
MOV_DS_AX = b"\x8e\xd8"        # mov ds, ax
MOV_SS_AX = b"\x8e\xd0"        # mov ss, ax
MOV_ES_BX = b"\x8e\xc3"        # mov es, bx
OUT_DX_AL = b"\xee"            # out dx, al
INC_ES0 = b"\x26\xfe\x06\x00\x00"  # inc byte [es:0]

_JCC = {"jb": 0x72, "jz": 0x74, "jnz": 0x75, "jmp": 0xEB}


class Asm:
    """Instructions appended in order; jumps (rel8) name a label, resolved by `assemble`."""

    def __init__(self) -> None:
        self.items: list[bytes | tuple[str, str]] = []
        self.labels: dict[str, int] = {}
        self._at = 0

    def emit(self, *codes: bytes) -> "Asm":
        for c in codes:
            self.items.append(c)
            self._at += len(c)
        return self

    def label(self, name: str) -> "Asm":
        self.labels[name] = self._at
        return self

    def jump(self, op: str, label: str) -> "Asm":
        self.items.append((op, label))
        self._at += 2
        return self

    def out(self, port: int, value: int) -> "Asm":
        """out port, value (through al; dx for ports above 0xff)."""
        if port <= 0xFF:
            return self.emit(mov_al(value), out_imm(port))
        return self.emit(mov_dx(port), mov_al(value), OUT_DX_AL)

    def assemble(self) -> bytes:
        out = bytearray()
        for it in self.items:
            if isinstance(it, bytes):
                out += it
                continue
            op, label = it
            rel = self.labels[label] - (len(out) + 2)
            if not -128 <= rel <= 127:
                raise ValueError(f"jump to {label!r} out of rel8 range")
            out += bytes([_JCC[op], rel & 0xFF])
        return bytes(out)


# ------------------------------------------------------------------ what the boot sector programs
KBC_DATA, KBC_CMD = 0x60, 0x64

# (port, value, why). Values are chosen to differ from what QEMU resets and SeaBIOS leaves.
DEVICE_WRITES: tuple[tuple[int, int, str], ...] = (
    # 8259 PICs: re-initialised with other vector bases, then masks; ELCR makes IRQs level-triggered
    (0x20, 0x11, "PIC master ICW1: edge, cascade, ICW4 follows"),
    (0x21, 0x20, "PIC master ICW2: vectors 0x20-0x27"),
    (0x21, 0x04, "PIC master ICW3: slave on IRQ2"),
    (0x21, 0x01, "PIC master ICW4: 8086 mode"),
    (0xA0, 0x11, "PIC slave ICW1"),
    (0xA1, 0x28, "PIC slave ICW2: vectors 0x28-0x2f"),
    (0xA1, 0x02, "PIC slave ICW3: cascade identity 2"),
    (0xA1, 0x01, "PIC slave ICW4: 8086 mode"),
    (0x21, 0xB8, "PIC master OCW1: mask IRQ3,4,5,7"),
    (0xA1, 0x8E, "PIC slave OCW1: mask IRQ9,10,11,15"),
    (0x20, 0x0B, "PIC master OCW3: read ISR next"),
    (0x4D0, 0x28, "ELCR master: IRQ3 and IRQ5 level-triggered"),
    (0x4D1, 0x8E, "ELCR slave: IRQ9,10,11,15 level-triggered"),
    # 8254 PIT: three channels in three modes
    (0x43, 0x34, "PIT control: channel 0, lobyte/hibyte, mode 2 (rate generator)"),
    (0x40, 0x9C, "PIT channel 0 count low"),
    (0x40, 0x2E, "PIT channel 0 count high (0x2e9c: ~100 Hz)"),
    (0x43, 0x54, "PIT control: channel 1, lobyte only, mode 2"),
    (0x41, 0x12, "PIT channel 1 count 0x12"),
    (0x43, 0xB6, "PIT control: channel 2, lobyte/hibyte, mode 3 (square wave)"),
    (0x42, 0x33, "PIT channel 2 count low"),
    (0x42, 0x05, "PIT channel 2 count high (0x0533)"),
    (0x61, 0x01, "port 0x61: PIT channel 2 gate on, speaker off"),
    # MC146818 RTC / CMOS
    (0x70, 0x0A, "RTC index: register A"),
    (0x71, 0x2A, "RTC register A: 32.768 kHz divider, periodic rate 10 (64 Hz)"),
    (0x70, 0x0B, "RTC index: register B"),
    (0x71, 0x42, "RTC register B: periodic interrupt enabled, 24-hour mode"),
    (0x70, 0x38, "CMOS index 0x38 (NVRAM)"),
    (0x71, 0xA5, "CMOS 0x38 := 0xa5"),
    (0x70, 0x39, "CMOS index 0x39"),
    (0x71, 0x5A, "CMOS 0x39 := 0x5a"),
    # 16550 UART at 0x3f8 (the guest's own isa-serial, see guest_args)
    (0x3FB, 0x80, "COM1 LCR: DLAB on"),
    (0x3F8, 0x03, "COM1 divisor low: 38400 baud"),
    (0x3F9, 0x00, "COM1 divisor high"),
    (0x3FB, 0x1B, "COM1 LCR: 8 bits, even parity, 1 stop, DLAB off"),
    (0x3FA, 0xC7, "COM1 FCR: FIFO on, both cleared, trigger level 14"),
    (0x3FC, 0x0B, "COM1 MCR: DTR, RTS, OUT2"),
    (0x3F9, 0x05, "COM1 IER: receive and line-status interrupts"),
    (0x3FF, 0x42, "COM1 scratch register"),
    (0x3F8, 0x48, "COM1 THR: 'H'"),
    # 8237 DMA, controller 1 channel 2, and its page register
    (0x0A, 0x06, "DMA1 mask channel 2"),
    (0x0C, 0x00, "DMA1 clear byte flip-flop"),
    (0x04, 0x00, "DMA1 channel 2 address low"),
    (0x04, 0x30, "DMA1 channel 2 address high (0x3000)"),
    (0x05, 0xFF, "DMA1 channel 2 count low"),
    (0x05, 0x01, "DMA1 channel 2 count high (0x1ff)"),
    (0x81, 0x02, "DMA channel 2 page: 0x02 (address 0x23000)"),
    (0x0B, 0x46, "DMA1 mode: channel 2, single, write to memory"),
    (0xD6, 0xC1, "DMA2 mode: channel 5, cascade"),
)

KBC_COMMAND_BYTE = 0x47  # keyboard and mouse interrupts, system flag, scancode translation


def _kbc_wait(a: Asm, name: str) -> None:
    """Spin until the 8042 input buffer is empty (status bit 1 clear)."""
    a.label(name).emit(in_imm(KBC_CMD), test_al(0x02)).jump("jnz", name)


def devices_program() -> Asm:
    a = Asm()
    a.emit(CLI, XOR_AX_AX, MOV_DS_AX, MOV_SS_AX, mov_sp(0x7C00))
    for port, value, _why in DEVICE_WRITES:
        a.out(port, value)
    _kbc_wait(a, "kbc1")
    a.out(KBC_CMD, 0x60)                # 8042: write command byte
    _kbc_wait(a, "kbc2")
    a.out(KBC_DATA, KBC_COMMAND_BYTE)   # ... the command byte
    a.label("sweep").emit(mov_bx(DIRTY_FIRST >> 4))          # es walks the pages, 4 KiB apart
    a.label("page").emit(MOV_ES_BX, INC_ES0, add_bx(PAGE >> 4), cmp_bx(DIRTY_END >> 4)).jump("jb", "page")
    a.emit(inc_dword(HEARTBEAT_ADDR))   # one sweep done: heartbeat
    a.jump("jmp", "sweep")
    return a


DEVICES_BOOT_SECTOR = devices_program().assemble()

STI = b"\xfb"                  # sti
HLT = b"\xf4"                  # hlt: sleep until an interrupt


def ticker_program() -> Asm:
    """The accelerator probe's boot sector (accel.kvm_runs_guests): interrupts on, then halt and
    count a heartbeat at each wake-up. SeaBIOS leaves the PIT's channel 0 at 18.2 Hz and its
    IRQ0 handler installed, so the counter moves only if timer interrupts wake a halted vCPU,
    as a Linux kernel's idle loop needs (the devices program, which runs with interrupts off,
    would run where a kernel cannot)."""
    a = Asm()
    a.emit(CLI, XOR_AX_AX, MOV_DS_AX, MOV_SS_AX, mov_sp(0x7C00), STI)
    a.label("idle").emit(HLT, inc_dword(HEARTBEAT_ADDR)).jump("jmp", "idle")
    return a


TICKER_BOOT_SECTOR = ticker_program().assemble()


# ------------------------------------------------------------------ guest command line and liveness

@dataclass(frozen=True)
class Guest:
    name: str
    args: tuple[str, ...]  # extra QEMU arguments, the same on both sides (put before the device set's)
    runs: bool  # the source runs before and during the migration
    min_mem_mb: int = 16  # guest RAM it needs at least (cells and captures use at least this)
    boot_seconds: float = 30.0  # how long it may take to start (firmware, a kernel under TCG)

    @property
    def heartbeat(self) -> tuple[int, int] | None:
        """(guest-physical address, size in bytes) of the counter in RAM, None for a paused
        guest and for one whose heartbeat is on its serial port (serial_heartbeat)."""
        return {"devices": (HEARTBEAT_ADDR, 4), "dirtier": (DIRTY_FIRST, 1), "ticker": (HEARTBEAT_ADDR, 4)}.get(self.name)

    @property
    def serial_heartbeat(self) -> bool:
        return self.name == "linux"

    @property
    def checked(self) -> bool:
        """Has it a heartbeat to see advancing after a load?"""
        return self.heartbeat is not None or self.serial_heartbeat

    def mem_mb(self, asked: int) -> int:
        return max(asked, self.min_mem_mb)


FLOPPY_BYTES = 1474560  # a 1.44 MB floppy


def boot_floppy(path: Path | str, sector: bytes) -> Path:
    """A raw 1.44 MB floppy whose boot sector is `sector`. A floppy, not a hard disk: SeaBIOS
    did not boot an IDE disk on QEMU 10.0's q35 (AHCI) here, it boots the floppy on every
    machine of both versions, and the floppy controller is one more device in the stream."""
    if len(sector) > 510:
        raise ValueError(f"boot sector of {len(sector)} bytes: more than 510")
    path = Path(path)
    path.write_bytes(sector + bytes(510 - len(sector)) + b"\x55\xaa" + bytes(FLOPPY_BYTES - 512))
    return path


def guest(name: str, workdir: Path | str) -> Guest:
    """The guest `name`, its boot disk (if any) written into `workdir`."""
    if name == "paused":
        return Guest(name, (), False)
    if name == "ticker":  # the accelerator probe's (not a cell's guest: not in GUESTS)
        disk = boot_floppy(Path(workdir) / "guest-ticker.img", TICKER_BOOT_SECTOR)
        return Guest(name, ("-drive", f"file={qemu_opt_value(str(disk))},format=raw,if=floppy,index=0,snapshot=on"),
                     True)
    if name not in GUESTS:
        raise ValueError(f"unknown guest {name!r} (known: {', '.join(GUESTS)})")
    if name == "linux":  # built once in the project cache, not in workdir (see linux_guest.build)
        try:
            kernel, initrd = linux_guest.build()
        except (linux_guest.LinuxGuestMissing, OSError) as e:
            raise ValueError(f"the linux guest is not available: {e}") from None
        # a kernel under TCG on a shared 2-core machine takes about 30-60 s to its heartbeat
        return Guest(name, linux_guest.qemu_args(kernel, initrd), True, linux_guest.MIN_MEM_MB, 240.0)
    sector = DIRTIER_BOOT_SECTOR if name == "dirtier" else DEVICES_BOOT_SECTOR
    disk = boot_floppy(Path(workdir) / f"guest-{name}.img", sector)
    # snapshot=on: neither side ever writes the image
    args = ["-drive", f"file={qemu_opt_value(str(disk))},format=raw,if=floppy,index=0,snapshot=on"]
    if name == "devices":  # the UART it programs, first so that it is COM1 (0x3f8)
        args = ["-chardev", "null,id=guestcom1", "-device", "isa-serial,chardev=guestcom1,iobase=0x3f8,irq=4"] + args
    return Guest(name, tuple(args), True)


_XP = re.compile(r":\s*(0x[0-9a-fA-F]+)")


def read_counter(q, addr: int, size: int) -> int:
    """The guest-physical counter at `addr` (1 or 4 bytes), through the monitor's `xp`."""
    fmt = {1: "b", 4: "w"}[size]
    text = q.cmd("human-monitor-command", **{"command-line": f"xp /1{fmt}x {addr:#x}"})
    m = _XP.search(text)
    if not m:
        raise ValueError(f"unexpected xp answer {text!r}")
    return int(m[1], 16)


class GuestDidNotStart(QemuTimeout):
    """A running guest of ours did not get to its heartbeat within the time allowed (the
    message says how long and the last thing it printed): no migration was tried."""


def _left(deadline: float) -> float:
    """Seconds to `deadline`, at least a little (one more bounded QMP command)."""
    return max(0.5, deadline - time.monotonic())


def serial_heartbeat_advances(q, within: float = 30.0) -> bool:
    """Does a running Linux guest print two successive heartbeats on its serial port within
    `within` seconds (its output from now on: the ringbuf is the process's own)? Every QMP
    command is bounded by what is left of `within`."""
    reader = linux_guest.SerialReader(q)
    deadline = time.monotonic() + within
    first = None
    while time.monotonic() < deadline:
        beat = reader.last_heartbeat(timeout=_left(deadline))
        if beat is not None:
            if first is None:
                first = beat
            elif beat > first:
                return True
        time.sleep(min(0.2, _left(deadline)))
    return False


def heartbeat_advances(q, g: Guest, *, samples: int = 4, interval: float = 0.15, within: float = 30.0) -> bool:
    """Does the running guest's heartbeat change between successive reads? `within`: how long
    a serial heartbeat (the Linux guest's, printed every ~0.1 s plus the dirtying) may take."""
    if g.serial_heartbeat:
        return serial_heartbeat_advances(q, within)
    hb = g.heartbeat
    if hb is None:
        return True
    first = read_counter(q, *hb)
    for _ in range(samples - 1):
        time.sleep(interval)
        if read_counter(q, *hb) != first:
            return True
    return False


def counter_reaches(q, g: Guest, n: int, within: float) -> bool:
    """Does the guest's RAM heartbeat get to at least `n` within `within` seconds?"""
    deadline = time.monotonic() + within
    while True:
        if read_counter(q, *g.heartbeat) >= n:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def wait_started(q, g: Guest, timeout: float = 30.0) -> None:
    """Wait until a started guest's boot sector runs (its heartbeat moves): firmware time; a
    Linux guest until its /init says it is ready (drivers loaded, devices exercised).
    GuestDidNotStart after `timeout` seconds (each QMP command bounded by what is left), with
    the last line the guest printed."""
    deadline = time.monotonic() + timeout
    if g.serial_heartbeat:
        reader = linux_guest.SerialReader(q)
        while time.monotonic() < deadline:
            text = reader.read(timeout=_left(deadline))
            if linux_guest.READY in text and len(linux_guest.HEARTBEAT.findall(bytes(text))) >= 2:
                return
            time.sleep(min(0.25, _left(deadline)))
        last = reader.last_line()
        raise GuestDidNotStart(f"the {g.name} guest did not boot within {timeout:.0f} s: "
                               + (f"last serial line {last!r}" if last else "nothing on its serial port"))
    if g.heartbeat is None:
        return
    while time.monotonic() < deadline:
        if heartbeat_advances(q, g, samples=2, interval=0.1) and (g.name != "devices" or read_counter(q, *g.heartbeat)):
            return
        time.sleep(0.1)
    addr, size = g.heartbeat
    raise GuestDidNotStart(f"the {g.name} guest did not start within {timeout:.0f} s: its heartbeat "
                           f"({size} bytes at {addr:#x}) does not move")
