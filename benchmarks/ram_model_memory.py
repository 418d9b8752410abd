#!/usr/bin/env python3
"""The reference RAM model's memory for a guest of N MiB: every page written once by the main
stream and once more by one of 4 multifd channels (hash_pages, as `check --ram-model` runs
it), then `peak_rss_mb` printed. N = 0 gives the process's own baseline.

    python benchmarks/ram_model_memory.py 4096
"""

import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conformance.rules.ram_model import ChannelPacket, ChannelSync, Eos, MainPage, RamModel  # noqa: E402


def main() -> int:
    pages = (int(sys.argv[1]) << 20) // 4096
    model = RamModel(4, "per-section", hash_pages=True)
    for i in range(pages):  # the first pass: the main stream sends every page
        model.feed(MainPage("pc.ram", i * 4096, i.to_bytes(8, "little")))
    for c in range(4):
        model.feed(ChannelSync(c))
    model.feed(Eos())
    batch = 128
    for start in range(0, pages, batch):  # round 1: each page again, on the channels in turn
        c = (start // batch) % 4
        model.feed(ChannelPacket(c, tuple(("pc.ram", i * 4096, (i + 1).to_bytes(8, "little"))
                                          for i in range(start, min(pages, start + batch)))))
    model.close()
    assert not model.violations, model.violations[:3]
    assert len(model.ram) == pages
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    nbytes = getattr(model.ram, "nbytes", lambda: None)()  # None: a dict (before the compact store)
    print(f"pages {pages} state_bytes {nbytes} peak_rss_mb {peak:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
