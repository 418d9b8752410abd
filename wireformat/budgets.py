"""Budgets: every quantity an input can make us allocate, loop over or wait for, bounded in
one place.

A stream, a -dump-vmstate file, a manifest or a VMDESCRIPTION comes from anyone. Whatever a
length, a count, a packet number or a nesting level in it says, the reader first compares it
with the budget here and refuses (a typed error naming the place) before it allocates or
loops. The numbers are far above anything a real QEMU writes (the comment says what the real
thing needs) and low enough that a hostile input stays within `PROCESS_MEMORY` and
`INPUT_SECONDS`, which tests/test_hostile.py and scripts/hostile_run.py enforce on every
command that reads input.

The README lists these numbers; change them here only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = ["BUDGETS", "Budgets", "BudgetExceeded", "DecodeBudget", "JsonInputError", "load_json", "json_depth"]


@dataclass(frozen=True)
class Budgets:
    # -- main stream (wireformat.reader) --------------------------------------------------
    device_body: int = 64 << 20  # bytes of one device section body framed (real: < 1 MiB; VGA ~256 KiB)
    vmdescription: int = 64 << 20  # bytes of the VMDESCRIPTION JSON (real: ~100 KiB-2 MiB)
    machine_name: int = 4096  # bytes of the configuration's machine type (real: < 32)
    compressed_page: int = 2 * 65536  # bytes of one compressed page record (real: < one page)
    # -- multifd channels (wireformat.multifd, conformance.rules.channels) ------------------
    packet_data: int = 64 << 20  # bytes of one multifd packet's payload (real: 512 KiB of pages)
    missing_packets_listed: int = 8  # gaps in packet numbers named in a message (counted, never enumerated)
    # -- return path (wireformat.returnpath) -------------------------------------------------
    rp_bitmap: int = 1 << 30  # bytes of one received bitmap (32 TiB of 4 KiB pages)
    # -- VMDESCRIPTION and other JSON -------------------------------------------------------
    json_depth: int = 64  # nesting of objects/arrays in any JSON we read (real VMDESCRIPTION: < 16)
    json_bytes: int = 64 << 20  # a JSON file given on the command line (--vmstate; real: ~2 MiB)
    manifest_bytes: int = 1 << 20  # a capture directory's manifest.json
    # decoded VMSD elements (fields, array elements, nested structs) for one whole stream: one
    # total over every body and every nesting level, not per level (real pc-i440fx streams of
    # 7.2 and 10.0: ~6,500 for framing and cross-check together)
    vmstate_elements: int = 1 << 18  # (a nested struct element costs ~20-50 µs: 262,144 stay within seconds)
    kept_bodies: int = 32 << 20  # device body bytes kept to cross-check against the VMDESCRIPTION
    trailer_window: int = 16 << 20  # bytes at a file's end searched for the VMDESCRIPTION first
    # -- compressed input (conformance.check.inputs) ----------------------------------------
    # decompressed bytes per compressed byte, past the first `ratio_grace` bytes: a bomb is an
    # input error, not a long wait (the real captures in tests/data compress 11:1 to 25:1 with
    # xz; even all-zero guest RAM is ~9 bytes a page on the wire, so far less than this)
    decompression_ratio: int = 1024
    ratio_grace: int = 256 << 20
    # -- waiting (tcp:, FIFOs) ----------------------------------------------------------------
    wait_seconds: float = 60.0  # default --timeout for a connection / a FIFO's writer
    # -- what the hostile suite holds every command to ---------------------------------------
    process_memory: int = 2 << 30  # RLIMIT_AS of one command (Python itself takes ~250 MiB of it)
    input_seconds: float = 30.0  # one command on one hostile input of at most ~16 MiB


BUDGETS = Budgets()


class BudgetExceeded(ValueError):
    """An input asked for more than a budget allows (the message names the budget)."""


class JsonInputError(ValueError):
    """JSON from an input that is not usable: not UTF-8, not JSON, too deep, too large;
    `offset`: the byte where it went wrong, where known (else 0)."""

    def __init__(self, message: str, offset: int = 0):
        super().__init__(message)
        self.offset = offset


class DecodeBudget:
    """What is left of `Budgets.vmstate_elements` for one stream: every decode of a device
    body spends from it, at every nesting level, so nesting cannot multiply a per-level cap."""

    __slots__ = ("left", "limit")

    def __init__(self, limit: int = BUDGETS.vmstate_elements):
        self.left = self.limit = limit

    def spend(self, n: int) -> bool:
        """Take n elements; False (and nothing taken) when they are not left."""
        if n > self.left:
            self.left = 0
            return False
        self.left -= n
        return True


def json_depth(value: Any, limit: int) -> int:
    """Nesting depth of a decoded JSON value, stopping as soon as it passes `limit`."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            v = v.values()
        elif not isinstance(v, list):
            continue
        if d > deepest:
            deepest = d
            if d > limit:
                return d
        stack.extend((x, d + 1) for x in v if isinstance(x, (dict, list)))
    return deepest


# The last document load_json parsed from immutable bytes: a stream's VMDESCRIPTION is read by
# the trailer's body sizer, the Loader, the device-state and the value rules, each from the
# same bytes; parsing and depth-walking it once saves most of a small check's run time.
_CACHE_MAX = 4 << 20
_last: tuple = (None, 0, 0, None)


def load_json(data: bytes | bytearray | memoryview | str, what: str, *, max_bytes: int = BUDGETS.json_bytes,
              max_depth: int = BUDGETS.json_depth) -> Any:
    """JSON from an input, within the byte and depth budgets; JsonInputError (one line, with
    the byte offset where known) for anything else: bad UTF-8, bad JSON, integer literals
    past Python's digit limit, nesting deeper than the C parser's recursion limit or
    `max_depth`. The value of equal `bytes` parsed last time is returned again: callers
    read it and never change it."""
    global _last
    cacheable = type(data) is bytes and len(data) <= _CACHE_MAX
    if cacheable:
        raw, mb, md, value = _last
        if mb == max_bytes and md == max_depth and (raw is data or raw == data):
            return value
    value = _load_json(data, what, max_bytes, max_depth)
    if cacheable:
        _last = (data, max_bytes, max_depth, value)
    return value


def _load_json(data, what: str, max_bytes: int, max_depth: int) -> Any:
    if len(data) > max_bytes:
        raise JsonInputError(f"{what}: {len(data)} bytes, more than the {max_bytes} budget")
    if isinstance(data, str):
        text = data
    else:
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as e:
            raise JsonInputError(f"{what}: not UTF-8 at byte {e.start}", e.start) from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        at = len(text[: e.pos].encode("utf-8", "surrogatepass"))
        raise JsonInputError(f"{what}: not JSON (byte {at}): {e.msg}", at) from None
    except RecursionError:
        raise JsonInputError(f"{what}: JSON nested too deeply (more than {max_depth} levels)") from None
    except ValueError as e:  # an integer literal past sys.get_int_max_str_digits()
        raise JsonInputError(f"{what}: not JSON: {str(e).splitlines()[0]}") from None
    if json_depth(value, max_depth) > max_depth:
        raise JsonInputError(f"{what}: JSON nested too deeply (more than {max_depth} levels)")
    return value
