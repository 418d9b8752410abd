"""manifest.json is data: one schema on every read, file names confined to the capture
directory, no free-form QEMU arguments; hostile manifests end in one line and exit 2, and
start no QEMU."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from conformance.check import manifest as mf

SETS = ("none", "virtio-net+virtio-blk", "e1000+usb")

GOOD = {
    "migconform": "capture/2",
    "source": {"qemu": "10.0.2", "version": "10.0"},
    "destination": {"qemu": "7.2.22", "version": "7.2", "status": "completed"},
    "arguments": {"machine": "pc-q35-7.2", "devices": "e1000+usb", "mem_mb": 64, "ram": "seed:5",
                  "ram_backend": "file", "guest": "dirtier", "capabilities": {"multifd": True, "xbzrle": False},
                  "parameters": {"multifd-channels": 4, "multifd-compression": "zstd", "direct-io": False},
                  "globals": ["migration.multifd-flush-after-each-section=off"]},
    "main": "main.bin",
    "return_path": "return-path.bin",
    "channels": ["multifd0.bin", "multifd1.bin"],
    "channel_order": ["main.bin", "multifd0.bin", "multifd1.bin"],
    "guest_ram": None,
    "final_ram_sha256": {"source": "ab" * 32, "destination": None},
    "bytes": {"main.bin": 10, "multifd0.bin": 5, "multifd1.bin": 0, "return-path.bin": 0},
    "seconds": 1.5,
}


def with_(path: str, value, doc=GOOD) -> dict:
    """GOOD with the field at dotted `path` set to `value` (mf.__name__: removed)."""
    doc = json.loads(json.dumps(doc))
    *parents, last = path.split(".")
    d = doc
    for p in parents:
        d = d[p]
    if value is mf:
        del d[last]
    else:
        d[last] = value
    return doc


def test_a_written_manifest_reads_back_as_itself():
    m = mf.parse(GOOD, device_sets=SETS)
    assert m.arguments.guest == "dirtier" and m.arguments.ram_backend == "file"
    assert m.arguments.parameters == {"multifd-channels": 4, "multifd-compression": "zstd", "direct-io": False}
    assert m.files == ("main.bin", "multifd0.bin", "multifd1.bin", "return-path.bin")
    assert mf.to_json(m) == GOOD
    assert mf.parse(mf.to_json(m), device_sets=SETS) == m


def test_the_minimal_hand_written_form_is_enough_to_check():
    m = mf.parse({"main": "main.bin", "channels": ["multifd1.bin", "multifd0.bin"]})
    assert m.arguments is None and m.channels == ("multifd1.bin", "multifd0.bin")


@pytest.mark.parametrize("path, value, says", [
    ("extra", 1, "manifest: unknown field 'extra'"),
    ("arguments.extra_args", ["-D", "written-by-qemu.log"], "arguments: unknown field 'extra_args'"),
    ("main", "/etc/passwd", "not a plain file name"),
    ("main", "../main.bin", "not a plain file name"),
    ("channels", ["multifd0.bin", "a/../../b"], "channels[1]"),
    ("channels", ["multifd0.bin", "main.bin"], "named twice"),
    ("channel_order", ["main.bin", "other.bin"], "neither main nor a channel"),
    ("main", 7, "main: expected a file name"),
    ("arguments.machine", "pc,accel=tcg", "arguments.machine: expected a machine type name"),
    ("arguments.devices", "mine", "arguments.devices: expected one of none"),
    ("arguments.mem_mb", 1 << 30, "arguments.mem_mb: expected an integer from 1 to 16384"),
    ("arguments.mem_mb", True, "arguments.mem_mb: expected an integer"),
    ("arguments.ram_backend", "memory-backend-memfd", "arguments.ram_backend"),
    ("arguments.guest", "windows", "arguments.guest"),
    ("arguments.globals", ["virtio-net-pci.romfile=/etc/shadow"], "arguments.globals[0]"),
    ("arguments.globals", ["e1000.mac=1,id=x"], "arguments.globals[0]"),
    ("arguments.globals", ["-D"], "arguments.globals[0]"),
    ("arguments.capabilities", {"no-such-cap": True}, "unknown migration capability 'no-such-cap'"),
    ("arguments.capabilities", {"multifd": "yes"}, "arguments.capabilities.multifd: expected true or false"),
    ("arguments.parameters", {"tls-creds": "x"}, "'tls-creds'"),
    ("arguments.parameters", {"max-bandwidth": -1}, "max-bandwidth: expected an integer"),
    ("arguments.parameters", {"multifd-compression": "lz4"}, "multifd-compression: expected one of none"),
    ("arguments", mf, "arguments: missing"),
    ("source.qemu", "10", "source.qemu: expected a QEMU version"),
    ("destination.status", "exploded", "destination.status"),
    ("final_ram_sha256.source", "zz", "final_ram_sha256.source"),
    ("bytes", {"../x": 1}, "bytes key"),
    ("seconds", float("inf"), "seconds"),
    ("migconform", "capture/9", "migconform: expected one of"),
])
def test_what_the_schema_refuses(path, value, says):
    with pytest.raises(mf.ManifestError, match=None) as e:
        mf.parse(with_(path, value), device_sets=SETS)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_capture1_extra_args_only_in_the_one_form_it_wrote():
    old = with_("migconform", "capture/1")
    old = with_("arguments.guest", mf, old)
    old = with_("arguments.ram_backend", mf, old)
    old["arguments"]["ram"] = "/home/someone/ram.img"
    old["extra_args"] = ["-drive", "file=dirtier-boot.img,format=raw,if=ide,index=0,snapshot=on"]
    m = mf.parse(old, device_sets=SETS)
    assert (m.arguments.guest, m.arguments.ram_backend, m.arguments.ram) == ("dirtier", "file", "file")
    old["extra_args"] = ["-D", "written-by-qemu.log"]
    with pytest.raises(mf.ManifestError, match="free-form QEMU arguments are not accepted"):
        mf.parse(old, device_sets=SETS)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
                           max_leaves=20)


@settings(max_examples=150, deadline=None)
@given(st.one_of(json_values,
                 st.sampled_from(sorted(GOOD)).flatmap(lambda k: json_values.map(lambda v: with_(k, v))),
                 st.sampled_from(sorted(GOOD["arguments"])).flatmap(
                     lambda k: json_values.map(lambda v: with_(f"arguments.{k}", v)))))
def test_any_json_is_a_manifest_or_one_clean_error(doc):
    try:
        m = mf.parse(doc, device_sets=SETS)
    except mf.ManifestError as e:
        assert "\n" not in str(e)
        return
    assert mf.parse(mf.to_json(m), device_sets=SETS) == m


# ---------------------------------------------------------------- files

def capture_dir(tmp_path: Path, doc=GOOD) -> Path:
    d = tmp_path / "cap"
    d.mkdir()
    (d / "manifest.json").write_text(json.dumps(doc))
    for name in ("main.bin", "multifd0.bin", "multifd1.bin", "return-path.bin"):
        (d / name).write_bytes(b"x")
    return d


def test_files_resolve_only_to_regular_files_inside(tmp_path):
    d = capture_dir(tmp_path)
    assert mf.resolve(d, "main.bin") == d / "main.bin"
    (d / "alias.bin").symlink_to("main.bin")
    assert mf.resolve(d, "alias.bin") == d / "alias.bin"  # a link that stays inside is fine
    (d / "zero.bin").symlink_to("/dev/zero")
    (d / "out.bin").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").write_bytes(b"secret")
    os.mkfifo(d / "fifo.bin")
    (d / "sub.bin").mkdir()
    for name, says in (("zero.bin", "outside"), ("out.bin", "outside"), ("fifo.bin", "not a regular file"),
                       ("sub.bin", "not a regular file"), ("missing.bin", "No such file"),
                       ("../cap/main.bin", "not a plain file name")):
        with pytest.raises(mf.ManifestError, match=says):
            mf.resolve(d, name)


@pytest.mark.parametrize("content, says", [
    (b"{", "not JSON"),
    (b"[" * 100000 + b"]" * 100000, "nested too deeply"),
    (b'{"main": ' + b"9" * 5000 + b"}", "not JSON"),
    (b'{"main": "\xff"}', "not UTF-8"),
    (b" " * (mf.MAX_BYTES + 1), "more than a manifest's"),
])
def test_unreadable_manifests(tmp_path, content, says):
    (tmp_path / "manifest.json").write_bytes(content)
    with pytest.raises(mf.ManifestError, match=says):
        mf.load(tmp_path)


def test_a_manifest_that_is_not_a_file(tmp_path):
    os.mkfifo(tmp_path / "manifest.json")  # reading it would block for ever
    with pytest.raises(mf.ManifestError, match="not a regular file"):
        mf.load(tmp_path)


def replay(d: Path, capsys) -> subprocess.CompletedProcess:
    from conformance.cli import main

    code = main(["replay", str(d)])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["replay"], code, out, err)


@pytest.mark.parametrize("hostile", [
    {"extra_args": ["-D", "PWNED"]},
    {"arguments.globals": ["isa-debugcon.iobase=0xe9", "chardev.path=PWNED"]},
    {"main": "/dev/zero"},
    {"main": "zero.bin"},
    {"arguments.parameters": {"tls-creds": "PWNED"}},
])
def test_replay_refuses_hostile_manifests_before_starting_anything(tmp_path, capsys, hostile):
    doc = dict(GOOD, migconform="capture/1") if "extra_args" in hostile else GOOD
    for path, value in hostile.items():
        doc = with_(path, value, doc) if "." in path or path in doc else {**doc, path: value}
    doc = json.loads(json.dumps(doc).replace("PWNED", str(tmp_path / "pwned")))
    d = capture_dir(tmp_path, doc)
    (d / "zero.bin").symlink_to("/dev/zero")
    p = replay(d, capsys)
    assert p.returncode == 2 and p.stdout == "", p
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"migconform: error: {d}"), lines
    assert not (tmp_path / "pwned").exists()


def test_replay_of_a_manifest_without_arguments_says_why(tmp_path, capsys):
    d = capture_dir(tmp_path, {"main": "main.bin", "channels": []})
    p = replay(d, capsys)
    assert p.returncode == 2 and "nothing says how to start a destination" in p.stderr, p.stderr
