"""One fuzzing worker process for tests/test_fuzz_redis.py: a loader campaign whose
destination "build" fails on planted classes of input, sharing its example database
through Redis.

The planted oracle stands for a destination build with known bugs, so that what a worker
finds is decided by the input alone (as with a real binary) and known to the test: `shorter`
fails every input shorter than the seed, `longer` every input longer than it.

    python -m tests.fuzz_worker --redis URL --key KEY --plant shorter[,longer]
                                --findings DIR --seconds S [--corpus-only]

prints one JSON line: executions, the execution at which each plant first fired, and the
sha256 of every saved finding's stream by plant.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import redis
from hypothesis.extra.redis import RedisExampleDatabase

from conformance.tools.fuzz.campaign import Campaign
from conformance.tools.fuzz.loader import LoaderTarget
from conformance.tools.fuzz.store import FindingStore
from strategies.fuzz import decode_seed
from tests.test_fuzz import small_seed_bytes

PLANTS = {
    "shorter": lambda data, seed: len(data) < len(seed),
    "longer": lambda data, seed: len(data) > len(seed),
    "never": lambda data, seed: False,  # a build without any of the planted bugs
}


class PlantedLoader(LoaderTarget):
    def __init__(self, plants: list[str], seed: bytes):
        super().__init__("10.0", machine="pc-i440fx-10.0")
        self.plants, self.seed = plants, seed
        self.execs = 0
        self.first_hit: dict[str, int] = {}

    def run(self, data: bytes):
        self.execs += 1
        for name in self.plants:
            if PLANTS[name](data, self.seed):
                self.first_hit.setdefault(name, self.execs)
                raise RuntimeError(f"planted {name}")
        return super().run(data)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--redis", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--plant", required=True)
    ap.add_argument("--findings", required=True)
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--corpus-only", action="store_true")
    a = ap.parse_args()
    seed_bytes = small_seed_bytes()
    loader = PlantedLoader(a.plant.split(","), seed_bytes)
    store = FindingStore(Path(a.findings))
    camp = Campaign(seed=decode_seed(seed_bytes), seed_name="seed.bin", store=store, version="10.0",
                    machine="pc", devices="none", loader=loader,
                    database=RedisExampleDatabase(redis.Redis.from_url(a.redis)), key=a.key,
                    corpus_only=a.corpus_only)
    try:
        stats = camp.run(a.seconds)
    finally:
        loader.close()
    found = {}
    for meta in store.signatures().values():
        plant = meta["loader"]["first_violation"].rsplit(" ", 1)[-1]
        found[plant] = hashlib.sha256((Path(a.findings) / meta["stream"]).read_bytes()).hexdigest()
    print(json.dumps({"execs": stats.execs, "first_hit": loader.first_hit, "findings": found}))


if __name__ == "__main__":
    main()
