"""Hostile inputs for every command that reads one, and the harness that holds each run to
the budgets (wireformat/budgets.py): exit code 0/1/2, no traceback, a one-line error, within
`BUDGETS.process_memory` (RLIMIT_AS) and `BUDGETS.input_seconds`.

Inputs are built from the real captures shipped in tests/data/multifd (QEMU 7.2 and 10.0
main streams and multifd channels): truncations, bit flips, splices of two captures, hostile
lengths written over length fields, hostile VMDESCRIPTION and -dump-vmstate JSON (deep
nesting, wrong types, huge integers, nested zero-size arrays, huge array_len, binary), hostile
manifests, and each of them compressed (gzip/xz/bzip2/zstd), corrupted after compression,
cut short, or a decompression bomb.

`cases()` is the hypothesis strategy (a Case from a seeded random.Random, so hypothesis
shrinks the seed); `make_case(rnd)` is the same for the long run (scripts/hostile_run.py).
tests/hostile_runner.py runs a case: as `python -m conformance.cli` (the quick form in the
test suite) or in a child forked from a warm interpreter (the long form's throughput).
"""

from __future__ import annotations

import bz2
import copy
import functools
import gzip
import json
import lzma
import random
from dataclasses import dataclass, field
from pathlib import Path

import zstandard
from hypothesis import strategies as st


DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "multifd"

TARGETS = ("check", "dump", "dump-fields", "channel", "vmstate", "reference", "recovery", "manifest",
           "vmstate-diff", "stdin", "dir")


@dataclass
class Case:
    target: str
    argv: list[str]  # {NAME} stands for the path of files[NAME]
    files: dict[str, bytes] = field(default_factory=dict)
    stdin: bytes = b""
    what: list[str] = field(default_factory=list)  # the edits made, for the report

    def __repr__(self) -> str:
        sizes = {k: len(v) for k, v in self.files.items()}
        return f"Case({self.target}, {self.argv}, files={sizes}, stdin={len(self.stdin)}, what={self.what})"


# ------------------------------------------------------------------------------ seeds


@functools.cache
def seeds() -> dict[str, list[bytes]]:
    """The real captures: {"main": [...], "channel": [...]} (decompressed)."""
    out: dict[str, list[bytes]] = {"main": [], "channel": []}
    for p in sorted(DATA.glob("*.bin.xz")):
        out["main" if ".main." in p.name else "channel"].append(lzma.decompress(p.read_bytes()))
    return out


def _trailer_split(data: bytes) -> tuple[bytes, bytes] | None:
    """(stream up to and including EOF, VMDESCRIPTION JSON) of a stream with a trailer."""
    end = len(data)
    while True:
        p = data.rfind(b"\x00\x06", 0, end)
        if p < 0:
            return None
        n = int.from_bytes(data[p + 2 : p + 6], "big")
        if p + 6 + n == len(data) and data[p + 6 : p + 7] == b"{":
            return data[: p + 1], data[p + 6 :]
        end = p + 1


def with_vmdescription(data: bytes, desc: bytes) -> bytes:
    split = _trailer_split(data)
    head = split[0] if split else data
    return head + b"\x06" + len(desc).to_bytes(4, "big") + desc


# ------------------------------------------------------------------------------ JSON


_HOSTILE_VALUES = (None, True, -1, 0, 2**31, 2**64, 10**30, -(2**63), 1.5, "", "x" * 300, [], {}, [[[]]],
                   {"a": {"b": {}}}, "\udcff")


def _nested_zero_arrays(levels: int, n: int) -> dict:
    inner: dict = {"vmsd_name": "leaf", "version": 1, "fields": []}
    for i in range(levels):
        inner = {"vmsd_name": f"s{i}", "version": 1,
                 "fields": [{"name": f"a{i}", "type": "struct", "size": 0, "array_len": n, "struct": inner}]}
    return inner


def _mutate_json(rnd: random.Random, value, budget: int = 6):
    """Replace a few nodes of a decoded JSON value by hostile values."""
    for _ in range(rnd.randint(1, budget)):
        node, parent, key = value, None, None
        for _ in range(rnd.randint(1, 12)):
            if isinstance(node, dict) and node:
                parent, key = node, rnd.choice(list(node))
            elif isinstance(node, list) and node:
                parent, key = node, rnd.randrange(len(node))
            else:
                break
            node = parent[key]
        if parent is None:
            return copy.deepcopy(rnd.choice(_HOSTILE_VALUES))
        # a copy: the same list or dict placed twice would make the document circular
        parent[key] = copy.deepcopy(rnd.choice(_HOSTILE_VALUES)) if rnd.random() < 0.8 else _nested_zero_arrays(3, 1 << 20)
    return value


def hostile_json(rnd: random.Random, base: bytes | None = None) -> tuple[bytes, str]:
    """A JSON document (or not) meant to break a reader of VMDESCRIPTION / -dump-vmstate /
    manifest JSON; and its name."""
    kind = rnd.choice(("deep", "deep-object", "huge-int", "binary", "types", "zero-arrays", "array-len",
                       "mutated", "mutated", "mutated", "empty", "not-object"))
    if kind == "deep":
        n = rnd.choice((65, 1000, 100_000))
        return b"[" * n + b"]" * n, f"json deep {n}"
    if kind == "deep-object":
        n = rnd.choice((65, 2000, 50_000))
        return b'{"a":' * n + b"1" + b"}" * n, f"json deep object {n}"
    if kind == "huge-int":
        return b'{"page_size": ' + b"9" * rnd.choice((4301, 100_000)) + b', "devices": []}', "json huge int"
    if kind == "binary":
        return rnd.randbytes(rnd.randint(1, 4096)), "binary"
    if kind == "types":
        doc = {"page_size": rnd.choice(_HOSTILE_VALUES), "devices": copy.deepcopy(rnd.choice(_HOSTILE_VALUES))}
        return json.dumps(doc).encode(), "json wrong types"
    if kind == "zero-arrays":
        levels = rnd.randint(2, 6)
        dev = {"name": "hostile", "instance_id": 0, **_nested_zero_arrays(levels, rnd.choice((1 << 16, 1 << 24)))}
        return json.dumps({"page_size": 4096, "devices": [dev]}).encode(), f"nested zero-size arrays x{levels}"
    if kind == "array-len":
        dev = {"name": "hostile", "instance_id": 0, "vmsd_name": "hostile", "version": 1,
               "fields": [{"name": "a", "type": "uint8", "size": 1, "array_len": rnd.choice((1 << 26, 1 << 40, -1))}]}
        return json.dumps({"page_size": 4096, "devices": [dev]}).encode(), "huge array_len"
    if kind == "empty":
        return b"", "empty"
    if kind == "not-object":
        return rnd.choice((b"[]", b"1", b'"x"', b"null", b"true")), "json not an object"
    if base:
        try:
            doc = json.loads(base)
        except (ValueError, RecursionError):
            doc = {}
        return json.dumps(_mutate_json(rnd, doc)).encode(), "json mutated"
    return b"{}", "json {}"


# ------------------------------------------------------------------------------ streams


_HOSTILE_WORDS = (b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x80\x00\x00\x00", b"\x00\x00\x00\x00",
                  b"\xff" * 8, b"\x7f" + b"\xff" * 7, b"\x00\x00\x00\x00\x04\x00\x00\x00", b"\xff\xff\xff\xfe\x00\x00\x00\x00")


def mutate_stream(rnd: random.Random, data: bytes, others: list[bytes], what: list[str]) -> bytes:
    for _ in range(rnd.randint(1, 3)):
        op = rnd.choice(("truncate", "flip", "splice", "length", "length", "insert", "duplicate", "vmdesc", "zero"))
        n = len(data)
        if n == 0:
            break
        at = rnd.randrange(n)
        if op == "truncate":
            data = data[:at]
        elif op == "flip":
            b = bytearray(data)
            for _ in range(rnd.randint(1, 8)):
                i = rnd.randrange(n)
                b[i] ^= 1 << rnd.randrange(8)
            data = bytes(b)
        elif op == "splice":
            other = rnd.choice(others)
            data = data[:at] + other[rnd.randrange(len(other)):]
        elif op == "length":
            w = rnd.choice(_HOSTILE_WORDS)
            data = data[:at] + w + data[at + len(w):]
        elif op == "insert":
            data = data[:at] + rnd.randbytes(rnd.randint(1, 64)) + data[at:]
        elif op == "duplicate":
            k = rnd.randint(1, 4096)
            data = data[:at] + data[at : at + k] * rnd.randint(2, 8) + data[at:]
        elif op == "zero":
            k = rnd.randint(1, 4096)
            data = data[:at] + bytes(min(k, n - at)) + data[at + k:]
        elif op == "vmdesc":
            split = _trailer_split(data)
            desc, name = hostile_json(rnd, split[1] if split else None)
            data = with_vmdescription(data, desc)
            what.append(name)
            continue
        what.append(f"{op}@{at}")
    return data


def compress(rnd: random.Random, data: bytes, what: list[str]) -> bytes:
    kind = rnd.choice(("gzip", "xz", "bzip2", "zstd"))
    packed = {"gzip": lambda d: gzip.compress(d, 1), "xz": lambda d: lzma.compress(d, preset=0),
              "bzip2": lambda d: bz2.compress(d, 1), "zstd": lambda d: zstandard.ZstdCompressor(level=1).compress(d)}[kind](data)
    fault = rnd.choice(("none", "none", "truncate", "corrupt"))
    if fault == "truncate" and len(packed) > 8:
        packed = packed[: rnd.randrange(6, len(packed))]
    elif fault == "corrupt" and len(packed) > 8:
        b = bytearray(packed)
        for _ in range(rnd.randint(1, 4)):
            b[rnd.randrange(6, len(b))] ^= 0xFF
        packed = bytes(b)
    what.append(f"{kind}/{fault}")
    return packed


@functools.cache
def bomb(kind: str) -> bytes:
    """A valid stream header, then 1 GiB of zeros, compressed: 1024 members (gzip, xz, bzip2
    and zstd frames all concatenate) of 1 MiB each; ~0.2-1 MiB in all, made in a second."""
    head = seeds()["main"][0][:9]
    one = {"gzip": lambda d: gzip.compress(d, 9), "xz": lambda d: lzma.compress(d, preset=6),
           "bzip2": lambda d: bz2.compress(d, 9), "zstd": lambda d: zstandard.ZstdCompressor(level=19).compress(d)}[kind]
    zero = bytes(1 << 20)
    return one(head + zero) + one(zero) * 1023


# ------------------------------------------------------------------------------ cases


def _stream(rnd: random.Random, what: list[str], pool: str = "main") -> bytes:
    s = seeds()
    base = rnd.choice(s[pool])
    data = mutate_stream(rnd, base, s["main"] + s["channel"], what)
    if rnd.random() < 0.2:
        data = compress(rnd, data, what)
    return data


def _manifest(rnd: random.Random, what: list[str]) -> tuple[bytes, dict[str, bytes]]:
    files = {"m/main.bin": _stream(rnd, what)}
    doc: object = {"main": "main.bin", "channels": []}
    kind = rnd.choice(("ok", "escape", "types", "json", "many", "args", "absolute", "dev"))
    if kind == "escape":
        doc = {"main": "../" * rnd.randint(1, 8) + "etc/passwd", "channels": []}
    elif kind == "absolute":
        doc = {"main": "/dev/zero", "channels": ["/proc/self/mem"]}
    elif kind == "dev":
        doc = {"main": "main.bin", "channels": ["main.bin"] * rnd.randint(2, 300)}
    elif kind == "types":
        doc = _mutate_json(rnd, {"main": "main.bin", "channels": ["a"], "format": "capture/2",
                                 "arguments": {"machine": "pc", "mem_mb": 32}})
    elif kind == "many":
        doc = {"main": "main.bin", "channels": [f"multifd{i}.bin" for i in range(rnd.choice((3, 300)))]}
    elif kind == "args":
        doc = {"main": "main.bin", "channels": [], "format": "capture/1",
               "arguments": {"extra_args": ["-D", "trace.log"], "machine": "pc"}}
    if kind == "json":
        raw, name = hostile_json(rnd)
        what.append(f"manifest {name}")
    else:
        raw = json.dumps(doc).encode()
        what.append(f"manifest {kind}")
    return raw, files


def make_case(rnd: random.Random, target: str | None = None) -> Case:
    target = target or rnd.choice(TARGETS)
    what: list[str] = []
    s = seeds()
    if target in ("check", "dump", "dump-fields"):
        f = {"in.bin": _stream(rnd, what)}
        if rnd.random() < 0.05:
            f = {"in.bin": bomb(rnd.choice(("gzip", "xz", "bzip2", "zstd")))}
            what = ["bomb"]
        argv = {"check": ["check", "{in.bin}"], "dump": ["dump", "{in.bin}"],
                "dump-fields": ["dump", "--fields", "{in.bin}"]}[target]
        if target == "check" and rnd.random() < 0.3:
            argv.append("--json")
        return Case(target, argv, f, what=what)
    if target == "stdin":
        return Case(target, [rnd.choice(("check", "dump")), "-"], stdin=_stream(rnd, what), what=what)
    if target == "channel":
        i = rnd.randrange(len(s["main"]))
        chans = s["channel"][2 * i : 2 * i + 2]
        files = {"main.bin": s["main"][i] if rnd.random() < 0.7 else _stream(rnd, what)}
        argv = ["check", "{main.bin}"]
        for k, c in enumerate(chans):
            name = f"mf{k}.bin"
            files[name] = mutate_stream(rnd, c, s["channel"], what) if rnd.random() < 0.8 else c
            argv += ["--channel", "{" + name + "}"]
        if rnd.random() < 0.3:
            argv += ["--dest-channels", str(rnd.choice((0, 1, 2, 3, 255, -1)))]
        if rnd.random() < 0.2:
            argv.append("--ram-model")
        return Case(target, argv, files, what=what)
    if target == "vmstate":
        raw, name = hostile_json(rnd)
        what.append(name)
        return Case(target, ["check", "{in.bin}", "--vmstate", "{dump.json}"], {"in.bin": rnd.choice(s["main"]), "dump.json": raw},
                    what=what)
    if target == "reference":
        return Case(target, ["check", "{in.bin}", "--reference", "{ref.bin}"],
                    {"in.bin": rnd.choice(s["main"]), "ref.bin": _stream(rnd, what)}, what=what)
    if target == "recovery":
        files = {"new.bin": _stream(rnd, what), "old.bin": _stream(rnd, what)}
        return Case(target, ["check", "{new.bin}", "--recovery", "{old.bin}"], files, what=what)
    if target == "manifest":
        raw, files = _manifest(rnd, what)
        files["m/manifest.json"] = raw
        cmd = rnd.choice((["check", "{m}"], ["dump", "{m}"]))
        return Case(target, cmd, files, what=what)
    if target == "dir":
        files = {"d/main.bin": _stream(rnd, what)}
        for k in range(rnd.randint(0, 3)):
            files[f"d/multifd{k}.bin"] = mutate_stream(rnd, rnd.choice(s["channel"]), s["channel"], what)
        return Case(target, [rnd.choice(("check", "dump")), "{d}"], files, what=what)
    # vmstate-diff
    a, na = hostile_json(rnd)
    b, nb = hostile_json(rnd)
    return Case(target, ["vmstate-diff", "{a.json}", "{b.json}"], {"a.json": a, "b.json": b}, what=[na, nb])


def cases(targets: tuple[str, ...] = TARGETS) -> st.SearchStrategy[Case]:
    """Hostile cases; hypothesis draws the target and the seed of the edits."""
    return st.builds(lambda t, seed: make_case(random.Random(seed), t), st.sampled_from(targets),
                     st.integers(0, 2**32 - 1))


def materialise(case: Case, root: Path) -> list[str]:
    """Write the case's files under root; the argv with paths filled in."""
    for name, data in case.files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    dirs = {str(Path(n).parent) for n in case.files if "/" in n}
    argv = []
    for a in case.argv:
        if a.startswith("{") and a.endswith("}"):
            key = a[1:-1]
            a = str(root / key) if key in case.files or key in dirs else a
        argv.append(a)
    return argv
