"""The user's own devices: --device and named sets from a TOML or JSON file, in capture (and its
manifest, and replay) and in the matrix."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conformance.check import manifest as mf
from conformance.check.dump import dump_stream
from conformance.check.pipeline import trailer_body_sizer
from conformance.tools import devsets
from conformance.tools.matrix.grid import MATRIX_DEVICE_SETS, MatrixError, build_grid, guest_args

TOML = """
# storage and NICs of my own
[my-nics]
netdev = ["hubport,id=u0,hubid=7"]
device = ["e1000e,netdev=u0,mac=52:54:00:aa:bb:01", "rtl8139"]

[my-watchdog]
device = "i6300esb"
"""


def test_toml_and_json_files_give_the_same_sets(tmp_path):
    (tmp_path / "sets.toml").write_text(TOML)
    (tmp_path / "sets.json").write_text(json.dumps({
        "my-nics": {"device": ["e1000e,netdev=u0,mac=52:54:00:aa:bb:01", "rtl8139"],
                    "netdev": ["hubport,id=u0,hubid=7"]},
        "my-watchdog": {"device": ["i6300esb"]}}))
    t = devsets.load_sets(tmp_path / "sets.toml", MATRIX_DEVICE_SETS)
    assert t == devsets.load_sets(tmp_path / "sets.json", MATRIX_DEVICE_SETS)
    # backends first, whatever the order in the file
    assert t["my-nics"] == ("-netdev", "hubport,id=u0,hubid=7", "-device", "e1000e,netdev=u0,mac=52:54:00:aa:bb:01",
                            "-device", "rtl8139")
    assert t["my-watchdog"] == ("-device", "i6300esb")
    assert devsets.resolve("my-nics", MATRIX_DEVICE_SETS, t) == ("none", t["my-nics"])
    assert devsets.resolve("e1000+usb", MATRIX_DEVICE_SETS, t) == ("e1000+usb", ())


@pytest.mark.parametrize("doc, msg", [
    ('[a]\ndevice = ["virtio-blk-pci,drive=x,romfile=/etc/passwd"]', "without '/'"),
    ('[a]\nnetdev = ["user,id=n0"]', "hubport"),
    ('[a]\nnetdev = ["tap,id=n0,script=x"]', "hubport"),
    ('[a]\nblockdev = ["driver=file,filename=x"]', "null-co"),
    ('[a]\nchardev = ["socket,id=c,path=x"]', "null"),
    ('[a]\ndevice = ["e1000 -object x"]', "without '/'"),
    ('[a]\nobject = ["memory-backend-ram,id=m"]', "unknown key 'object'"),
    ('[none]\ndevice = ["e1000"]', "built-in device set"),
    ('["bad name"]\ndevice = ["e1000"]', "letters, digits"),
    ("[a\ndevice = 1", "not valid TOML"),
])
def test_bad_files_are_one_line_errors_naming_the_file(tmp_path, doc, msg):
    (tmp_path / "s.toml").write_text(doc)
    with pytest.raises(devsets.DeviceSetError, match=msg) as e:
        devsets.load_sets(tmp_path / "s.toml", MATRIX_DEVICE_SETS)
    assert "\n" not in str(e.value) and "s.toml" in str(e.value)


def test_device_option_values_and_unknown_sets():
    assert devsets.device_values(["e1000", "usb-tablet,bus=xhci.0"]) == ("-device", "e1000", "-device",
                                                                        "usb-tablet,bus=xhci.0")
    with pytest.raises(devsets.DeviceSetError, match="--device"):
        devsets.device_values(["e1000,romfile=../x/y"])
    with pytest.raises(devsets.DeviceSetError, match="unknown device set 'mine'.*--devices-file"):
        devsets.resolve("mine", MATRIX_DEVICE_SETS, {})


def test_manifest_records_the_users_devices_and_refuses_host_backends():
    a = mf.Arguments(machine="pc-q35-7.2", devices="none", mem_mb=64, device_args=("-device", "rtl8139"),
                     device_set="my-nics")
    m = mf.Manifest(main="main.bin", format=mf.FORMAT, source=mf.Side("7.2.22", "7.2"), arguments=a)
    back = mf.parse(json.loads(json.dumps(mf.to_json(m))))
    assert back.arguments.device_args == ("-device", "rtl8139") and back.arguments.device_set == "my-nics"
    doc = mf.to_json(m)
    for bad, where in ((["-object", "x"], "device_args[0]"), (["-netdev", "user,id=x"], "device_args[1]"),
                       (["-device"], "device_args"), (["-device", "e1000,romfile=/x"], "device_args[1]")):
        doc["arguments"]["device_args"] = bad
        with pytest.raises(mf.ManifestError, match=rf"arguments\.{where.replace('[', '.').split('.')[0]}"):
            mf.parse(doc)


def test_matrix_grid_knows_the_users_sets(tmp_path):
    (tmp_path / "sets.toml").write_text(TOML)
    user = devsets.load_sets(tmp_path / "sets.toml", MATRIX_DEVICE_SETS)
    g = build_grid(["7.2", "10.0"], ["pc-q35-7.2"], ["my-nics", "none"], ["none"], user_sets=user)
    assert {c.devices for c in g.cells()} == {"my-nics", "none"}
    with pytest.raises(MatrixError, match="--devices-file"):
        build_grid(["7.2"], ["pc-q35-7.2"], ["my-nics"], ["none"])
    name, extra = guest_args("my-nics", (), ("-kernel", "k"), user, ("-device", "i6300esb"))
    assert name == "none" and extra == ["-kernel", "k", *user["my-nics"], "-device", "i6300esb"]


# ---------------------------------------------------------------- real QEMU, through the CLI

def _cli(*args, timeout=240):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    p = subprocess.run([sys.executable, "-m", "conformance.cli", *args], capture_output=True, text=True,
                       timeout=timeout, env=env)
    return p.returncode, p.stdout, p.stderr


def _sections(path) -> set[str]:
    with open(path, "rb") as f:
        d = dump_stream(f, name=str(path), body_sizer=trailer_body_sizer(path))
    return {s["idstr"] for s in d["sections"] if "idstr" in s}


@pytest.mark.qemu
def test_capture_and_replay_with_a_set_of_mine_and_a_device(tmp_path):
    (tmp_path / "sets.toml").write_text(TOML)
    out = tmp_path / "cap"
    rc, so, se = _cli("capture", str(out), "--qemu", "7.2", "--machine", "pc-q35-7.2", "--devices-file",
                      str(tmp_path / "sets.toml"), "--devices", "my-nics", "--device", "i6300esb")
    assert rc == 0, se
    assert "my-nics, 4 device arguments of yours" in so
    m = json.loads((out / "manifest.json").read_text())["arguments"]
    assert m["devices"] == "none" and m["device_set"] == "my-nics"
    assert m["device_args"][-2:] == ["-device", "i6300esb"]
    secs = _sections(out / "main.bin")
    assert {"0000:00:01.0/e1000e", "0000:00:02.0/rtl8139", "0000:00:03.0/i6300esb_wdt"} <= secs, secs
    # the destination is started from the manifest alone: with these devices, so it completes
    rc, so, se = _cli("replay", str(out), "--qemu", "10.0")
    assert rc == 0 and "completed" in so, so + se
    rc, so, se = _cli("capture", str(tmp_path / "x"), "--qemu", "7.2", "--devices", "my-nics")
    assert rc == 2 and "unknown device set 'my-nics'" in se


@pytest.mark.qemu
def test_matrix_runs_a_set_of_mine(tmp_path):
    (tmp_path / "sets.json").write_text(json.dumps({"my-watchdog": {"device": ["i6300esb"]}}))
    rc, so, se = _cli("matrix", "--qemu", "7.2", "--qemu", "10.0", "--machines", "pc-i440fx-7.2", "--devices",
                      "my-watchdog", "--caps", "none", "--devices-file", str(tmp_path / "sets.json"), "--device",
                      "rtl8139", "--json", "-", "--no-progress", "--keep", str(tmp_path / "keep"))
    assert rc == 0, se
    data = json.loads(so)
    assert len(data["cells"]) == 4 and all(c["real"]["kind"] == "completed" for c in data["cells"])
    assert data["settings"]["device_sets"] == {"my-watchdog": ["-device", "i6300esb"]}
    caps = [p for p in (tmp_path / "keep").glob("*.mig")]
    # i440fx: the set's watchdog in the first free slot (2), then the --device (3)
    assert caps and all({"0000:00:02.0/i6300esb_wdt", "0000:00:03.0/rtl8139"} <= _sections(p) for p in caps)
