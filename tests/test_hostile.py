"""Hostile input, as an adversary or a new user's first day gives it: every command that reads
input answers with a verdict or one line naming the input (exit 0/1/2), never a traceback,
within the budgets of wireformat/budgets.py (memory: RLIMIT_AS of Budgets.process_memory;
time: Budgets.input_seconds).

The quick form (here, MIGCONFORM_HOSTILE_EXAMPLES cases, default 12) runs each case as a
subprocess of the CLI; the long form is scripts/hostile_run.py (-n 100000)."""

from __future__ import annotations

import gzip
import io
import json
import lzma
import os
import random
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings

from strategies.hostile import (
    Case,
    _nested_zero_arrays,
    _trailer_split,
    bomb,
    cases,
    make_case,
    seeds,
    with_vmdescription,
)
from tests.hostile_runner import Outcome, run_forked, run_subprocess
from wireformat import vmstate
from wireformat.budgets import BUDGETS, DecodeBudget, JsonInputError, load_json
from wireformat.multifd import MultifdChannelReader, MultifdRamPacket, build_ram_packet

from conformance.rules.channels import missing_numbers

EXAMPLES = int(os.environ.get("MIGCONFORM_HOSTILE_EXAMPLES", "12"))


def cli(*args, stdin=None, timeout=60):
    p = subprocess.run([sys.executable, "-m", "conformance.cli", *args], input=stdin, capture_output=True,
                       timeout=timeout)
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


def one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "internal error" not in err, err
    return lines[0]


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(cases())
def test_hostile_inputs_keep_the_contract(case):
    """Exit 0/1/2, no traceback, one line on stderr, within the memory and time budgets."""
    out = run_subprocess(case)
    assert out.problems() == [], f"{case!r}: {out.stderr[:500]}"


def test_forked_runner_sees_what_subprocess_sees():
    """The long form's harness judges a case as the subprocess form does (same exit, same line)."""
    case = make_case(random.Random(7), "vmstate")
    a, b = run_subprocess(case), run_forked(case)
    assert (a.exit, a.problems()) == (b.exit, b.problems())
    assert a.stderr.split(":")[-1] == b.stderr.split(":")[-1], (a.stderr, b.stderr)


def test_harness_flags_what_breaks_the_contract():
    """The harness itself can fail: an internal error, a traceback, a hang are each counted."""
    empty = run_forked(Case("x", ["check", "-"]), timeout=30)  # stdin an empty file: a verdict, at once
    assert not empty.timed_out and empty.exit == 1 and empty.problems() == []
    assert run_forked(Case("x", ["check", "-"]), timeout=0.0).problems() == ["over-time"]
    assert Outcome(2, "migconform: internal error: KeyError: 'x'\n", 0.1, 0).problems() == ["internal-error"]
    assert "traceback" in Outcome(1, "Traceback (most recent call last):\n  x\n", 0.1, 0).problems()
    assert Outcome(None, "", 31, 0, timed_out=True).problems() == ["over-time"]
    assert Outcome(0, "", 0.1, BUDGETS.process_memory + 1).problems() == ["over-memory"]


# ------------------------------------------------------------------- budgets, one by one


def test_missing_packet_numbers_are_counted_not_enumerated():
    t0 = time.monotonic()
    count, first = missing_numbers([0, 1, 5, 2**64 - 1], 8)
    assert time.monotonic() - t0 < 1
    assert count == 3 + (2**64 - 1 - 5 - 1) and first == [2, 3, 4, 6, 7, 8, 9, 10]
    assert missing_numbers([3, 4, 5], 8) == (0, [])


def test_splice_with_packet_number_near_2_64():
    """A real channel with one packet renumbered to 2**64-1 (a splice reaches it): a verdict
    naming the lost packets, within the memory budget."""
    s = seeds()
    chan = s["channel"][0]  # qemu100-i440fx-10.0 multifd0: 9.0 layout, one numbering for all channels
    last = [r for r in MultifdChannelReader(io.BytesIO(chan), copy=True) if isinstance(r, MultifdRamPacket)][-1]
    at = chan.rindex(build_ram_packet(last))
    last.packet_num = 2**64 - 1
    files = {"main.bin": s["main"][0], "mf0.bin": chan[:at] + build_ram_packet(last), "mf1.bin": s["channel"][1]}
    case = Case("channel", ["check", "{main.bin}", "--channel", "{mf0.bin}", "--channel", "{mf1.bin}", "--json"], files)
    out = run_subprocess(case)
    assert out.problems() == [] and out.exit == 1, out.stderr


def test_vmstate_elements_are_one_total_over_every_level():
    desc = {"name": "x", "instance_id": 0, **_nested_zero_arrays(4, 1 << 10)}  # 2**40 elements if multiplied
    t0 = time.monotonic()
    with pytest.raises(vmstate.VmstateBudgetError):
        vmstate.decode_body(desc, b"")
    assert time.monotonic() - t0 < BUDGETS.input_seconds
    # and over every body of a stream: what one decode spent, the next one lacks
    budget = DecodeBudget(100)
    flat = {"vmsd_name": "f", "fields": [{"name": "a", "type": "uint8", "size": 1, "array_len": 60}]}
    vmstate.decode_body(flat, bytes(60), budget=budget)
    with pytest.raises(vmstate.VmstateBudgetError):
        vmstate.decode_body(flat, bytes(60), budget=budget)


@pytest.mark.parametrize("text, says", [
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b"[" * (BUDGETS.json_depth + 1) + b"]" * (BUDGETS.json_depth + 1), "nested too deeply"),
    (b'{"a": ' + b"9" * 5000 + b"}", "not JSON"),
    (b"\xff\xfe", "not UTF-8 at byte 0"),
    (b'{"a": [1, }', r"not JSON \(byte 10\)"),
])
def test_json_within_budgets(text, says):
    with pytest.raises(JsonInputError, match=says):
        load_json(text, "X")
    assert load_json(b"[" * BUDGETS.json_depth + b"]" * BUDGETS.json_depth, "X") is not None


def _with_desc(tmp_path, desc: bytes, name="s.bin"):
    p = tmp_path / name
    p.write_bytes(with_vmdescription(seeds()["main"][1], desc))
    return str(p)


@pytest.mark.parametrize("desc, says", [
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (json.dumps({"page_size": 4096, "devices": [{"name": 1}]}).encode(), "has no string 'name'"),
    (json.dumps({"page_size": "4096", "devices": []}).encode(), "'page_size' missing or not an integer"),
    (b'{"page_size": ' + b"9" * 5000 + b', "devices": []}', "not JSON"),
    (json.dumps({"page_size": 4096, "devices": [{"name": "kvm-tpr-opt", "instance_id": 0,
                                                 **_nested_zero_arrays(4, 1 << 20)}]}).encode(), "budget"),
])
def test_hostile_vmdescription_is_a_violation(tmp_path, desc, says):
    path = _with_desc(tmp_path, desc)
    code, out, err = cli("check", path, "--json")
    assert code == 1 and err == ""
    found = [v for v in json.loads(out)["violations"] if v["code"] == "vmdescription-malformed"]
    assert len(found) == 1 and says in found[0]["message"], out
    code, out, err = cli("dump", "--fields", path)
    assert code == 0 and err == "" and "VMDESCRIPTION" in out


# ------------------------------------------------------------------- every input path


def _compressed(kind: str, data: bytes) -> bytes:
    import bz2

    import zstandard

    return {"gz": gzip.compress, "xz": lzma.compress, "bz2": bz2.compress,
            "zst": zstandard.ZstdCompressor(write_checksum=True).compress}[kind](data)  # as the zstd tool writes


@pytest.mark.parametrize("kind", ["gz", "xz", "bz2", "zst"])
@pytest.mark.parametrize("fault", ["truncated", "corrupt"])
@pytest.mark.parametrize("command", [["check"], ["dump"]])
def test_corrupt_compressed_input_is_one_line(tmp_path, kind, fault, command):
    packed = _compressed(kind, seeds()["main"][0])
    if fault == "truncated":
        packed = packed[: len(packed) // 2]
    else:
        b = bytearray(packed)
        for i in range(len(b) // 3, len(b) // 3 + 64):
            b[i] ^= 0x5A
        packed = bytes(b)
    p = tmp_path / f"bad.bin.{kind}"
    p.write_bytes(packed)
    good = tmp_path / "good.bin"
    good.write_bytes(seeds()["main"][1])
    argv = [command[0], str(p)] if len(command) == 1 else [command[0], str(good), command[1], str(p)]
    code, _, err = cli(*argv)
    line = one_line(err)
    assert code == 2 and str(p) in line and "byte" in line, line


@pytest.mark.parametrize("option", ["--reference", "--recovery", "--vmstate", "--channel"])
def test_truncated_compressed_side_inputs_are_one_line(tmp_path, option):
    p = tmp_path / "side.xz"
    side = seeds()["channel" if option == "--channel" else "main"][0]
    p.write_bytes(_compressed("xz", side)[: 3000 if option != "--channel" else 30000])
    good = tmp_path / "good.bin"
    good.write_bytes(seeds()["main"][1])
    code, _, err = cli("check", str(good), option, str(p))
    line = one_line(err)
    assert code == 2 and str(p) in line, line


def test_decompression_bomb_is_refused(tmp_path):
    p = tmp_path / "bomb.xz"
    p.write_bytes(bomb("xz"))  # 1 GiB of zeros after a header, ~150 KiB
    for command in ("check", "dump"):
        t0 = time.monotonic()
        code, _, err = cli(command, str(p))
        assert code == 2 and "decompression bomb" in one_line(err) and time.monotonic() - t0 < BUDGETS.input_seconds


def test_vmstate_given_a_binary_file(tmp_path):
    dump = tmp_path / "dump.json"
    dump.write_bytes(bytes(range(256)) * 4)
    stream = tmp_path / "s.bin"
    stream.write_bytes(seeds()["main"][1])
    code, _, err = cli("check", str(stream), "--vmstate", str(dump))
    assert code == 2 and str(dump) in one_line(err) and "UTF-8" in err


@pytest.mark.parametrize("path, says", [
    ("tcp:127.0.0.1:99999", "not in 0-65535"),
    ("/proc/self/mem", "/proc/self/mem"),
    ("/nonexistent/x", "No such file"),
])
def test_unreadable_inputs(path, says):
    for command in ("check", "dump"):
        code, _, err = cli(command, path)
        assert code == 2 and says in one_line(err)


def test_tcp_says_what_it_waits_for_and_times_out():
    code, _, err = cli("check", "tcp:127.0.0.1:0", "--timeout", "1")
    lines = err.splitlines()
    assert code == 2 and lines[0].startswith("migconform: listening on 127.0.0.1:") and "timeout 1 s" in lines[0]
    assert "no source connected within 1 s" in lines[1]


def test_fifo_without_writer_times_out_and_with_one_is_checked(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    code, _, err = cli("check", str(fifo), "--timeout", "1")
    assert code == 2 and time.monotonic() - t0 < 30
    assert "waiting for a writer on" in err and "none came" in err.splitlines()[-1]

    def write():
        time.sleep(0.8)
        with open(fifo, "wb") as f:
            f.write(seeds()["main"][1])

    threading.Thread(target=write, daemon=True).start()
    code, out, err = cli("dump", str(fifo), "--timeout", "20")
    assert code == 0 and "EOF at" in out


def test_stdin_held_open_times_out():
    p = subprocess.Popen([sys.executable, "-m", "conformance.cli", "check", "-", "--timeout", "1"],
                         stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        p.wait(timeout=60)  # stdin stays open: nothing is written to it, it is not closed
        err = p.stderr.read().decode()
    finally:
        p.kill()
        p.stdin.close()
        p.stderr.close()
    assert p.returncode == 2 and "waiting for data on <stdin>" in err and "none came" in err


# ------------------------------------------------------------------- the first day


def test_dump_decodes_a_multifd_channel_file(tmp_path):
    p = tmp_path / "multifd0.bin"
    p.write_bytes(seeds()["channel"][2])
    code, out, _ = cli("dump", str(p))
    assert code == 0 and "multifd channel" in out and "SYNC" in out and "pc.ram" in out
    code, out, _ = cli("dump", str(p), "--json")
    doc = json.loads(out)
    assert doc["init"]["id"] in (0, 1) and doc["packets"] >= 5 and doc["error"] is None


def test_dump_decodes_a_capture_directory(tmp_path):
    s = seeds()
    (tmp_path / "main.bin").write_bytes(s["main"][1])
    (tmp_path / "multifd0.bin").write_bytes(s["channel"][2])
    (tmp_path / "multifd1.bin").write_bytes(s["channel"][3])
    code, out, err = cli("dump", str(tmp_path), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert len(doc) == 3 and doc[0]["eof"] is not None and {d.get("kind") for d in doc[1:]} == {"multifd channel"}


def test_not_a_stream(tmp_path):
    p = tmp_path / "passwd"
    p.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")
    code, out, _ = cli("dump", str(p))
    assert code == 1 and "not a migration stream" in out
    assert "header      magic 0x726f6f74: not a migration stream" in out and "version" not in out  # 4 bytes of text
    code, out, _ = cli("check", str(p), "--json")
    assert code == 1 and [v["code"] for v in json.loads(out)["violations"]] == ["bad-magic"]


def test_trailer_split_finds_the_real_vmdescription():
    head, desc = _trailer_split(seeds()["main"][1])
    assert json.loads(desc)["devices"] and head.endswith(b"\x00")


def test_multifd_main_stream_alone_says_where_the_ram_went(tmp_path):
    s = seeds()
    main = tmp_path / "main.bin"
    main.write_bytes(s["main"][2])  # qemu72-i440fx-7.2: zero pages in the main stream, the rest on channels
    code, out, _ = cli("check", str(main))
    assert code == 0 and "note: 561 of 8322 RAM pages are not in this stream" in out and "--channel" in out
    chans = []
    for k in (4, 5):
        p = tmp_path / f"multifd{k}.bin"
        p.write_bytes(s["channel"][k])
        chans += ["--channel", str(p)]
    code, out, _ = cli("check", str(main), *chans)
    assert code == 0 and "note:" not in out


def test_a_repeated_violation_is_printed_once_with_a_count():
    from conformance.check.pipeline import Report
    from conformance.check.report import format_report
    from conformance.rules.sink import ViolationSink
    from conformance.rules.catalogue import Code

    sink = ViolationSink("10.0")
    for off in (10, 20, 30):
        sink.emit(Code.TRAILING_DATA, "main", off, "same words")
    sink.emit(Code.TRAILING_DATA, "main", 40, "other words")
    text = format_report(Report("x", "10.0", sink.violations, {}))
    assert text.count("same words") == 1 and "(and 2 more times, last @ 30)" in text and "other words" in text


def test_unknown_command_is_named_where_the_name_is_known():
    from wireformat.records import Command

    from conformance.rules.loader import Loader

    loader = Loader("7.2")
    loader._command(Command(offset=5, channel="main", cmd=11, data=b""))
    loader._command(Command(offset=9, channel="main", cmd=0x30, data=b""))
    msgs = [v.message for v in loader.violations]
    assert msgs[0].endswith("MIG_CMD_SWITCHOVER_START, which QEMU 7.2 does not have") and msgs[1] == "MIG_CMD 0x30 unknown (len 0x0)"


def test_a_mistyped_command_gets_a_suggestion():
    code, _, err = cli("chek", "x.bin")
    assert code == 2 and one_line(err) == "migconform: error: unknown command 'chek' (did you mean 'check'?)"
    code, _, err = cli("zzzz")
    assert code == 2 and "the commands are: check, dump" in one_line(err)
