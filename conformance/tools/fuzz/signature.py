"""What makes two findings the same: the verdict, the signal, and the first QEMU error line
with its numbers masked (ids, offsets and lengths differ from one mutated stream to the next)."""

from __future__ import annotations

import hashlib
import re

_NUM = re.compile(r"0x[0-9a-fA-F]+|\d+")
_QUOTED = re.compile(r"'[^']*'")


def mask(text: str | None) -> str:
    """Numbers and quoted names masked: "Unknown savevm section or instance 'timer' 0" and the
    same error for another device are one finding."""
    return _NUM.sub("N", _QUOTED.sub("'S'", text or ""))


def signature(kind: str, verdict: str, exit_code: int | None, first_error: str | None, other: str = "") -> str:
    """kind: "crash", "hang", "oom" or "model-disagreement"; other: the second oracle's side."""
    sig = f"{kind}|{verdict}|{exit_code if exit_code is not None and exit_code < 0 else ''}|{mask(first_error)}"
    return sig + (f"|{mask(other)}" if other else "")


def short_id(sig: str) -> str:
    return hashlib.sha256(sig.encode()).hexdigest()[:12]
