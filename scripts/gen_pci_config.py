#!/usr/bin/env python3
"""Write the read-only PCI header bytes each modelled version's PCI devices have into
conformance/rules/data/value-rules.json ("pci_config"), from streams the binary itself saved.

    scripts/gen_pci_config.py VERSION STREAM [STREAM ...]

get_pci_config_device (hw/pci/pci.c) fails a load when a byte differs from the device's
own under cmask & ~wmask & ~w1cmask; pci_init_cmask covers the IDs, the revision, the class,
the header type, the capability pointer and the status CAP_LIST bit, none of them writable.
A VMSD whose devices disagree between the streams (another machine family) gets no entry.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

from wireformat import vmstate
from wireformat.reader import StreamReader
from wireformat.records import DeviceState, VmDescription

# offset -> the cmask bits pci_init_cmask sets there
CMASK = {0x00: 0xFF, 0x01: 0xFF, 0x02: 0xFF, 0x03: 0xFF, 0x06: 0x10, 0x08: 0xFF, 0x09: 0xFF, 0x0A: 0xFF, 0x0B: 0xFF,
         0x0E: 0xFF, 0x34: 0xFF}
DATA = Path(__file__).resolve().parent.parent / "conformance" / "rules" / "data" / "value-rules.json"


def pci_config(desc: dict, body: bytes) -> bytes | None:
    """The PCI config space of a device body (its first field: the PCIDevice struct)."""
    decoded = vmstate.decode_body(desc, body)
    first = decoded.fields[0].value if decoded.fields else None
    for f in getattr(first, "fields", ()):
        if f.name.startswith("config[") and isinstance(f.value, (bytes, bytearray)):
            return bytes(f.value)
    return None


def observe(path: Path) -> dict[str, dict[str, int]]:
    data = path.read_bytes()
    descs = {}
    for r in StreamReader(io.BytesIO(data)):
        if isinstance(r, VmDescription):
            descs = {(d["name"], d.get("instance_id", 0)): d for d in json.loads(r.json)["devices"]}
    out = {}
    for r in StreamReader(io.BytesIO(data)):
        if isinstance(r, DeviceState) and r.idstr and "/" in r.idstr:
            desc = descs.get((r.idstr, 0))
            if desc is None or "vmsd_name" not in desc:
                continue
            try:
                cfg = pci_config(desc, bytes(r.data))
            except (ValueError, KeyError, TypeError, IndexError):
                continue
            if cfg is not None:
                out[desc["vmsd_name"]] = {f"{o:#04x}": cfg[o] & m for o, m in CMASK.items()}
    return out


def main(argv: list[str]) -> int:
    version, streams = argv[0], [Path(p) for p in argv[1:]]
    seen: dict[str, dict | None] = {}
    for s in streams:
        for vmsd, bytes_ in observe(s).items():
            if vmsd in seen and seen[vmsd] != bytes_:
                seen[vmsd] = None  # differs between machine families: not judged
            elif vmsd not in seen:
                seen[vmsd] = bytes_
    doc = json.loads(DATA.read_text())
    doc.setdefault("pci_config", {"cmask": {f"{o:#04x}": m for o, m in CMASK.items()}, "versions": {}})
    doc["pci_config"]["versions"][version] = {k: v for k, v in sorted(seen.items()) if v is not None}
    DATA.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{version}: {len(doc['pci_config']['versions'][version])} PCI VMSDs ({sum(v is None for v in seen.values())} differ by family)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
