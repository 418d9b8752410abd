"""The migconform CLI as a user and a CI job meet it: exit codes, JSON, one-line errors."""

import gzip
import json
import lzma
import subprocess
import sys

import pytest
import zstandard

from tests.test_loader import ZERO_NAMED, cmd, ram_stream, word

DESC = b'{"page_size": 4096, "devices": []}'
TRAILER = b"\x06" + len(DESC).to_bytes(4, "big") + DESC
GOOD = ram_stream(ZERO_NAMED, tail=b"\x00" + TRAILER)
BAD = ram_stream(ZERO_NAMED, word(0x10000, 0x22) + b"\x00", tail=b"\x00" + TRAILER)
SWITCHOVER = ram_stream(ZERO_NAMED, extra_cmds=cmd(11), tail=b"\x00" + TRAILER)


def run(*args, stdin=None):
    p = subprocess.run([sys.executable, "-m", "conformance.cli", *args], input=stdin, capture_output=True, timeout=60)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


@pytest.fixture
def streams(tmp_path):
    paths = {}
    for name, data in (("good", GOOD), ("bad", BAD), ("switchover", SWITCHOVER)):
        p = tmp_path / f"{name}.mig"
        p.write_bytes(data)
        paths[name] = p
    return paths


def test_check_exit_codes(streams):
    assert run("check", str(streams["good"]))[0] == 0
    code, out, err = run("check", str(streams["bad"]))
    assert code == 1
    assert "ram-offset-out-of-range" in out and "Illegal RAM offset 10000" in out
    assert err == ""


def test_check_json_schema(streams):
    code, out, _ = run("check", str(streams["bad"]), "--json")
    assert code == 1
    doc = json.loads(out)
    assert doc["verdict"] == "violations"
    v = doc["violations"][0]
    assert set(v) >= {"code", "severity", "channel", "offset", "message"}
    assert v["severity"] == "reject" and v["channel"] == "main" and v["offset"] == BAD.index(word(0x10000, 0x22))
    assert doc["stats"]["ram_blocks"]["pc.ram"]["zero"] == 2
    code, out, _ = run("check", str(streams["good"]), "--json")
    assert code == 0 and json.loads(out)["verdict"] == "conforms" and json.loads(out)["violations"] == []


def test_target_changes_the_verdict(streams):
    assert run("check", str(streams["switchover"]), "--target", "10.0")[0] == 0
    code, out, _ = run("check", str(streams["switchover"]), "--target", "7.2", "--json")
    assert code == 1
    assert [v["code"] for v in json.loads(out)["violations"]] == ["unknown-command"]


@pytest.mark.parametrize("compress", [gzip.compress, lzma.compress, zstandard.ZstdCompressor().compress])
def test_compressed_inputs_are_read_transparently(tmp_path, compress):
    p = tmp_path / "capture.bin"  # named without an extension: detected by content
    p.write_bytes(compress(BAD))
    code, out, _ = run("check", str(p), "--json")
    assert code == 1
    assert json.loads(out)["violations"][0]["offset"] == BAD.index(word(0x10000, 0x22))


def test_stdin(streams):
    assert run("check", "-", stdin=GOOD)[0] == 0
    assert run("check", "-", stdin=gzip.compress(BAD))[0] == 1


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["check", "/nonexistent/stream"], "No such file or directory"),
        (["check", "."], "a capture directory needs manifest.json or exactly one main* file"),
        (["check", "GOOD", "--target", "6.0"], "target '6.0' is not modelled"),
        (["check", "GOOD", "--vmstate", "/nonexistent.json"], "No such file"),
    ],
)
def test_usage_and_io_errors_are_one_line(streams, args, fragment):
    args = [str(streams["good"]) if a == "GOOD" else a for a in args]
    code, out, err = run(*args)
    assert code == 2
    assert fragment in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_corrupt_compressed_data_is_an_io_error(tmp_path):
    p = tmp_path / "broken.gz"
    data = bytearray(gzip.compress(GOOD * 50))
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    code, _, err = run("check", str(p))
    assert code == 2 and f"{p} (gzip): corrupt or truncated compressed data at byte" in err and len(err.strip().splitlines()) == 1


def test_wrong_file_is_a_violation_not_a_crash(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("this is not a migration stream\n")
    code, out, err = run("check", str(p))
    assert code == 1 and "bad-magic" in out and err == ""
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    code, out, _ = run("check", str(empty), "--json")
    assert code == 1 and json.loads(out)["violations"][0]["code"] == "truncated"


def test_dump_human_and_json(streams):
    code, out, _ = run("dump", str(streams["switchover"]))
    assert code == 0
    assert "pc-i440fx-7.2" in out and "MIG_CMD_SWITCHOVER_START" in out and "pc.ram" in out
    code, out, _ = run("dump", str(streams["switchover"]), "--json")
    doc = json.loads(out)
    assert doc["configuration"]["machine_type"] == "pc-i440fx-7.2"
    assert [s["idstr"] for s in doc["sections"]] == ["ram"]
    assert doc["sections"][0]["parts"] == 1
    assert doc["ram"]["blocks"]["pc.ram"] == {"used_length": 0x10000, "zero": 1}
    assert doc["commands"][0]["name"] == "MIG_CMD_SWITCHOVER_START"


def test_dump_reports_where_decoding_stopped(tmp_path):
    p = tmp_path / "cut.mig"
    p.write_bytes(GOOD[:40])
    code, out, _ = run("dump", str(p), "--json")
    assert code == 1 and "stream ends" in json.loads(out)["error"]  # a stream that does not decode to its end
    assert run("dump", str(p), "--strict")[0] == 1


def test_send_src_downtime_opt_in(tmp_path):
    payload = (300).to_bytes(8, "big") + (120).to_bytes(8, "big")
    p = tmp_path / "sla.mig"
    p.write_bytes(ram_stream(ZERO_NAMED, extra_cmds=cmd(11, payload), tail=b"\x00" + TRAILER))
    code, out, _ = run("check", str(p), "--json")
    assert code == 1 and json.loads(out)["violations"][0]["code"] == "command-bad-length"  # as SWITCHOVER_START
    code, out, _ = run("check", str(p), "--send-src-downtime-id", "11", "--json")
    assert code == 0
    code, out, _ = run("dump", str(p), "--send-src-downtime-id", "11", "--json")
    assert json.loads(out)["commands"][0]["args"] == {"abort_limit_ms": 300, "source_downtime_ms": 120}


def test_tcp_listen_receives_a_stream():
    import socket
    import time

    with socket.socket() as s:  # a free port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.Popen([sys.executable, "-m", "conformance.cli", "check", f"tcp:127.0.0.1:{port}", "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                c = socket.create_connection(("127.0.0.1", port), timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline, "listener did not come up"
                time.sleep(0.05)
        with c:
            c.sendall(BAD)
        out, err = p.communicate(timeout=30)
    finally:
        p.kill()
    assert p.returncode == 1, err
    doc = json.loads(out)
    assert doc["violations"][0]["code"] == "ram-offset-out-of-range"
    assert doc["source"].startswith(f"tcp:127.0.0.1:{port} (from 127.0.0.1:")


@pytest.mark.qemu
def test_demo_runs_and_agrees_with_real_destinations(qemu):
    qemu("7.2"), qemu("10.0")  # both present (skip, or fail under CI, otherwise)
    code, out, err = run("demo", "--mem-mb", "32")
    assert code == 0, err
    assert out.count("== QEMU") == 3  # 7.2 and 10.0 on pc-i440fx-7.2, 10.0 on its newest type
    assert "5 verdicts agree with real destinations, 0 disagree" in out
    assert "MIG_CMD 0xb unknown" in out  # the 10.0 machine type's SWITCHOVER_START, judged for 7.2


@pytest.mark.qemu
def test_capture_then_check_the_directory(qemu, tmp_path):
    qemu("10.0")
    out = tmp_path / "cap"
    code, stdout, err = run("capture", str(out), "--qemu", "10.0", "--machine", "pc-q35-7.2",
                            "--devices", "virtio-net+virtio-blk", "--mem-mb", "16", "--ram", "7")
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["version"] == "10.0" and manifest["arguments"]["machine"] == "pc-q35-7.2"
    assert manifest["bytes"]["main.bin"] == (out / "main.bin").stat().st_size > 16 << 20  # random RAM travels whole
    code, stdout, err = run("check", str(out), "--json", "--target", "7.2")
    assert code == 0, stdout
    assert json.loads(stdout)["stats"]["configuration"]["machine_type"] == "pc-q35-7.2"
    assert run("capture", str(out))[0] == 2  # never overwrites a capture


def test_help_lists_every_command_as_its_own_parser_does():
    """`migconform --help` shows stubs instead of importing the command modules; their help
    must be what each module's parser says."""
    from conformance.cli import build_parser

    assert build_parser("").format_help() == build_parser(None).format_help()


@pytest.mark.parametrize("argv, absent", [
    (["--help"], ("construct", "conformance.rules.loader", "conformance.check.inputs", "conformance.qemu")),
    (["check", "GOOD"], ("conformance.qemu", "conformance.tools", "asyncio")),
])
def test_commands_import_only_what_they_use(streams, argv, absent):
    argv = [str(streams["good"]) if a == "GOOD" else a for a in argv]
    code = ("import contextlib, io, sys\nfrom conformance.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try:\n        main(sys.argv[1:])\n    except SystemExit:\n        pass\n"
            "print('\\n'.join(sys.modules))")
    p = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60)
    loaded = set(p.stdout.split())
    assert p.returncode == 0 and "conformance.cli" in loaded, p.stderr
    assert not [m for m in loaded if m.startswith(absent)]


def test_qemu_option_is_read_one_way(capsys):
    from conformance.cli import main
    from conformance.qemu import QemuNotFound, parse_pairs

    assert parse_pairs(["7.2=/a b/qemu", "10.0=/c,9.2=/d"], what="--qemu") == {
        "7.2": "/a b/qemu", "10.0": "/c", "9.2": "/d"}
    assert parse_pairs(["7.2", "10.0=/c"], what="--qemu", bare=True) == {"7.2": None, "10.0": "/c"}
    for bad in ("7.2", "latest=/q", "7.2=", "=/q"):
        with pytest.raises(QemuNotFound, match=r"--qemu takes VERSION=PATH \(VERSION like 10.0\), got"):
            parse_pairs([bad], what="--qemu")
    for argv in (["qemu", "list", "--qemu", "no-equals-sign"], ["demo", "--qemu", "7.2"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("migconform: error: --qemu takes VERSION=PATH") and err.count("\n") == 1


def test_capture_directory_layout(tmp_path, monkeypatch):
    from conformance.check.capture_dir import LayoutError, capture_files, find_captures, stream_files, write_manifest

    d = tmp_path / "cap"
    d.mkdir()
    (d / "main.bin").write_bytes(GOOD)
    (d / "multifd1.bin").write_bytes(b"")
    (d / "multifd0.bin").write_bytes(b"")
    (d / "multifd-notes").mkdir()  # a directory is no channel
    assert capture_files(d) == (d / "main.bin", [d / "multifd0.bin", d / "multifd1.bin"])
    write_manifest(d, {"main": "main.bin", "channels": ["multifd1.bin"]})
    assert capture_files(d) == (d / "main.bin", [d / "multifd1.bin"])
    assert stream_files(str(d), ["extra.bin"]) == (str(d / "main.bin"), [str(d / "multifd1.bin"), "extra.bin"])
    monkeypatch.chdir(tmp_path)
    assert stream_files("./cap/main.bin") == ("./cap/main.bin", [])  # a file keeps the name it was given
    (d / "manifest.json").write_text("{}")
    with pytest.raises(LayoutError, match="not a capture manifest: .*manifest.json"):
        capture_files(d)
    (tmp_path / "notes.md").write_text("not a stream")
    assert list(find_captures(tmp_path)) == [d]
def test_catalogue_shows_the_severity_on_each_modelled_version():
    code, out, _ = run("catalogue", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["ram-zero-fill"]["severity"] == {"7.2": "silent-loss", "10.0": "reject"}
    assert doc["ram-hook-without-rdma"]["severity"] == {"7.2": "reject", "10.0": "deviation"}
    code, out, _ = run("catalogue")
    assert out.splitlines()[0].split()[:3] == ["code", "7.2", "10.0"]
    assert next(line for line in out.splitlines() if line.startswith("ram-zero-fill ")).split()[1:3] == ["silent-loss", "reject"]
    code, out, _ = run("catalogue", "--markdown")
    assert "| `ram-zero-fill` | silent-loss | reject |" in out


def test_a_qemu_that_dies_at_start_is_one_line_not_an_internal_error(tmp_path):
    """A binary that reports a version but refuses to start (a broken build, a missing ROM):
    the command says QEMU's words in one line and exits 2."""
    import os
    import subprocess
    import sys

    from conformance.versions import NEWEST

    fake = tmp_path / "usr" / "bin" / "qemu-system-x86_64"
    fake.parent.mkdir(parents=True)
    fake.write_text("#!/bin/sh\n"
                    f'case "$*" in *--version*) echo "QEMU emulator version {NEWEST}.9"; exit 0;; esac\n'
                    'echo "qemu-system-x86_64: failed to find romfile \\"efi-virtio.rom\\"" >&2; exit 1\n')
    fake.chmod(0o755)
    # fuzz captures its seed from the binary first
    r = subprocess.run([sys.executable, "-m", "conformance.cli", "fuzz", "--qemu", NEWEST, "--findings",
                        str(tmp_path / "f"), "--time", "1s", "--target", "loader"],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "MIGCONFORM_QEMU": f"{NEWEST}={fake}"})
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("migconform: error:") and "efi-virtio.rom" in lines[0], r.stderr


@pytest.mark.parametrize("args, said", [
    (["check", "x.mig", "--jsn"], "unrecognized arguments: --jsn (did you mean '--json'?)"),
    (["check", "x.mig", "--traget", "7.2"], "(--traget: did you mean '--target'?)"),
    (["dump", "x.mig", "--feilds"], "unrecognized arguments: --feilds (did you mean '--fields'?)"),
    (["qemu", "lst"], "invalid choice: 'lst' (did you mean 'list'?)"),
    (["qemu", "dump-vmstat", "x.json"], "invalid choice: 'dump-vmstat' (did you mean 'dump-vmstate'?)"),
    (["vmstate-diff", "a.json", "b.json", "--stirct"], "unrecognized arguments: --stirct (did you mean '--strict'?)"),
    (["chek", "x.mig"], "unknown command 'chek' (did you mean 'check'?)"),
])
def test_a_mistyped_option_or_command_gets_a_suggestion(args, said):
    code, out, err = run(*args)
    last = err.strip().splitlines()[-1]
    assert code == 2 and out == "" and said in last, err


def test_an_unknown_option_with_nothing_close_gets_no_guess():
    code, _, err = run("check", "x.mig", "--zzzzzz")
    assert code == 2 and err.strip().splitlines()[-1].endswith("unrecognized arguments: --zzzzzz")


def test_dump_fields_says_where_a_value_is_cut(tmp_path):
    """Long values on a `dump --fields` text line end in a marker with the whole length; what
    is shown is the start of the value --json gives whole (a real 10.0 capture: x86 CPU state)."""
    from pathlib import Path

    main = tmp_path / "main.bin"
    main.write_bytes(lzma.decompress((Path(__file__).parent / "data" / "multifd" /
                                      "qemu100-i440fx-10.0.main.bin.xz").read_bytes()))
    code, text, _ = run("dump", "--fields", str(main))
    assert code == 0
    code, out, _ = run("dump", "--fields", "--json", str(main))
    whole: dict[str, list[str]] = {}  # field name -> its values' JSON, every section's
    for s in json.loads(out)["sections"]:
        for k, v in s.get("fields", {}).items():
            whole.setdefault(k, []).append(json.dumps(v))
    cut = [ln.strip() for ln in text.splitlines() if ln.endswith("characters shown)")]
    assert len(cut) >= 5
    for ln in cut:
        name, value = ln.split(" = ", 1)
        shown, marker = value.rsplit("… (", 1)
        n_shown, n_all = (int(x) for x in marker.removesuffix(" characters shown)").split(" of "))
        assert n_shown == len(shown) == 100 and n_all > 100
        assert any(len(w) == n_all and w.startswith(shown) for w in whole[name]), name
    shorter = [ln for ln in text.splitlines() if " = " in ln and not ln.endswith("characters shown)")]
    assert shorter and all(len(ln.split(" = ", 1)[1]) <= 100 for ln in shorter)


def test_qemus_advice_is_said_once_for_every_unknown_section(tmp_path):
    """A real 10.0 capture with three sections renamed, judged against the unedited capture as
    the destination's reference: three unknown sections, QEMU's advice said once with a count
    (--json keeps each message whole)."""
    from pathlib import Path

    ref = tmp_path / "ref.bin"
    ref.write_bytes(lzma.decompress((Path(__file__).parent / "data" / "multifd" /
                                     "qemu100-i440fx-10.0.main.bin.xz").read_bytes()))
    data = ref.read_bytes()
    for old, new in ((b"\x05pcspk", b"\x05pcspz"), (b"\x03fdc", b"\x03fdx"), (b"\x07vmmouse", b"\x07vmmousz")):
        assert data.count(old) == 1
        data = data.replace(old, new)
    edited = tmp_path / "edited.bin"
    edited.write_bytes(data)
    advice = "Make sure that your current VM setup matches your saved VM setup, including any hotplugged devices"
    code, out, _ = run("check", str(edited), "--reference", str(ref))
    assert code == 1 and out.count(advice) == 1 and f"(QEMU adds to each of these 3: {advice})" in out
    for name in ("pcspz", "fdx", "vmmousz"):
        assert f"Unknown savevm section or instance '{name}' 0\n" in out
    code, out, _ = run("check", str(edited), "--reference", str(ref), "--json")
    msgs = [v["message"] for v in json.loads(out)["violations"] if v["code"] == "unknown-section"]
    assert len(msgs) == 3 and all(m.endswith(advice) for m in msgs)


def test_a_real_capture_says_each_violation_once(tmp_path):
    """The 10.0 multifd capture judged as 7.2 and against another machine type: the machine
    type is one line, the multifd FLUSH flag 7.2 does not know one line with a count."""
    from pathlib import Path

    data = Path(__file__).parent / "data" / "multifd"
    paths = []
    for part in ("main", "multifd0", "multifd1"):
        p = tmp_path / f"{part}.bin"
        p.write_bytes(lzma.decompress((data / f"qemu100-i440fx-10.0.{part}.bin.xz").read_bytes()))
        paths.append(str(p))
    code, out, _ = run("check", str(tmp_path), "--target", "7.2")
    lines = [ln for ln in out.splitlines() if ln.startswith("  reject") or ln.startswith("  silent")]
    codes = [ln.split()[1] for ln in lines]
    assert code == 1 and len(codes) == len(set(codes)) and "machine-type-unsupported" in codes
    flush = next(ln for ln in lines if "ram-multifd-flush-unsupported" in ln)
    assert flush.count("Unknown combination of migration flags: 0x200") == 1 and "(and 2 more times, last @" in flush
    code, out, _ = run("check", str(tmp_path), "--machine", "pc-q35-7.2")
    assert code == 1 and out.count("machine-type") == 1 and "Machine type received is 'pc-i440fx-10.0'" in out
