"""`check --json` pinned on real captures and deterministic corruptions of them.

The goldens were written by the code before the conformance/ re-cut; the re-cut must not change
a verdict, a violation or a statistic. Regenerate deliberately with MIGCONFORM_PIN_WRITE=1 when a
rule changes on purpose, and say why in the commit.
"""

from __future__ import annotations

import json
import lzma
import os
import random
from pathlib import Path

import pytest

from conformance.cli import main

DATA = Path(__file__).parent / "data"
PINNED = DATA / "pinned"
SETS = ["qemu72-i440fx-7.2", "qemu100-i440fx-7.2", "qemu100-i440fx-10.0"]


def _corrupt(raw: bytes, seed: int) -> bytes:
    """One of three corruptions at a seeded place: cut short, one byte changed, a run doubled."""
    rnd = random.Random(seed)
    at = rnd.randrange(16, len(raw))
    kind = seed % 3
    if kind == 0:
        return raw[:at]
    if kind == 1:
        return raw[:at] + bytes([raw[at] ^ (1 << rnd.randrange(8))]) + raw[at + 1:]
    n = rnd.randrange(1, 64)
    return raw[:at] + raw[at - n:at] + raw[at:]


def _cases():
    for name in SETS:
        for target in ("7.2", "10.0"):
            yield f"{name}-channels-{target}", name, target, None, True
            yield f"{name}-main-{target}", name, target, None, False
        for seed in range(6):
            yield f"{name}-corrupt{seed}-10.0", name, "10.0", seed, True


CASES = list(_cases())


def _normalise(doc: dict) -> dict:
    doc.pop("source", None)
    doc["stats"].pop("seconds", None)
    mf = doc["stats"].get("multifd")
    if mf:
        mf.pop("file_ids", None)
    return doc


@pytest.mark.parametrize("case,name,target,seed,channels", CASES, ids=[c[0] for c in CASES])
def test_check_json_is_pinned(case, name, target, seed, channels, tmp_path, capsys):
    main_path = DATA / "multifd" / f"{name}.main.bin.xz"
    if seed is not None:
        raw = _corrupt(lzma.decompress(main_path.read_bytes()), seed)
        main_path = tmp_path / "main.bin"
        main_path.write_bytes(raw)
    argv = ["check", str(main_path), "--json", "--target", target]
    if channels:
        for i in (1, 0):  # any order
            argv += ["--channel", str(DATA / "multifd" / f"{name}.multifd{i}.bin.xz")]
    rc = main(argv)
    doc = _normalise(json.loads(capsys.readouterr().out))
    doc["exit"] = rc
    golden = PINNED / f"{case}.json"
    if os.environ.get("MIGCONFORM_PIN_WRITE"):
        golden.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    assert doc == json.loads(golden.read_text())
