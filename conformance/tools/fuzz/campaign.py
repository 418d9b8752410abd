"""One campaign: hypothesis draws edits of the seed, the targets judge the result, the oracles
turn verdicts into findings.

Hypothesis is the engine: its example database keeps what it learnt between runs (the
inputs that reached the most trace events, via `target()`, and the failing ones), and it
shrinks every new finding. A finding seen for the first time is raised (as an exception type
of its own, so that hypothesis shrinks each separately); once shrunk, the run restarts with it
known, so that the campaign goes on looking for others. Findings are saved as soon as they
are seen, and again whenever a smaller input reproduces them.
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from hypothesis import HealthCheck, Phase, Verbosity, given, settings, target
from hypothesis.control import currently_in_test_context
from hypothesis.database import DirectoryBasedExampleDatabase, ExampleDatabase, ReadOnlyDatabase

from strategies.fuzz import FuzzInput, Seed, fuzz_inputs
from conformance.tools.fuzz.signature import signature
from conformance.tools.fuzz.store import FindingStore

REAL_BAD = {"crashed": "crash", "hung": "hang", "out-of-memory": "oom"}


class Stop(BaseException):
    """Time is up (not an Exception: hypothesis lets it through instead of shrinking it)."""


class Finding(Exception):
    """Base of the per-signature exception types raised so that hypothesis shrinks a finding."""


_finding_types: dict[str, type] = {}


def _finding_type(sig: str) -> type:
    if sig not in _finding_types:
        _finding_types[sig] = type(f"Finding_{len(_finding_types)}", (Finding,), {})
    return _finding_types[sig]


class SharedCorpus(ExampleDatabase):
    """The example database as a campaign shares it: what was in it when read is never pruned.

    Hypothesis deletes a stored example that no longer fails when it replays it. In a campaign
    that is wrong twice over: a finding already known in this run is deliberately not raised
    again (so that the campaign looks for others), and an entry another worker stored may fail
    only on that worker's build or be a flaky hang. Either way it must stay for the others
    (hosts sharing one Redis database, or the next run). Entries written during this run —
    the intermediate steps of a shrink — are deleted as usual, so the corpus keeps one
    reproducer per finding rather than every shrink step.
    """

    def __init__(self, db: ExampleDatabase):
        super().__init__()
        self.db = db
        self.read: set[tuple[bytes, bytes]] = set()

    def save(self, key: bytes, value: bytes) -> None:
        self.db.save(key, value)

    def fetch(self, key: bytes):
        for value in self.db.fetch(key):
            self.read.add((key, value))
            yield value

    def delete(self, key: bytes, value: bytes) -> None:
        if (key, value) not in self.read:
            self.db.delete(key, value)

    def move(self, src: bytes, dest: bytes, value: bytes) -> None:
        if (src, value) in self.read:
            self.db.save(dest, value)
        else:
            self.db.move(src, dest, value)


@dataclass
class Stats:
    started: float = field(default_factory=time.monotonic)
    execs: int = 0
    verdicts: Counter = field(default_factory=Counter)  # "real:rejected", "loader:accepted", ...
    events: set = field(default_factory=set)
    findings: dict = field(default_factory=dict)  # signature -> json path
    new_findings: int = 0

    def line(self) -> str:
        dt = max(1e-6, time.monotonic() - self.started)
        counts = " ".join(f"{k}={v}" for k, v in sorted(self.verdicts.items()))
        return (f"{dt:6.0f}s {self.execs} execs ({self.execs / dt:.1f}/s) | {counts} | "
                f"events {len(self.events)} | findings {len(self.findings)} ({self.new_findings} new)")


@dataclass
class Campaign:
    seed: Seed
    seed_name: str
    store: FindingStore
    version: str
    machine: str
    devices: str
    guest: str = "paused"  # the seed's guest (conformance.qemu.guests)
    real: Any = None  # conformance.qemu.fuzz_target.RealTarget, or None
    loader: Any = None  # LoaderTarget, or None
    database: ExampleDatabase | None = None
    max_edits: int = 3
    key: str = ""  # names this campaign in the example database
    corpus_only: bool = False  # run only the inputs the example database holds (no new ones)
    channels: int | None = None  # multifd channels of the seed capture (None: a lone main stream)
    inputs: Callable | None = None  # the strategy of inputs (seed, max_edits=); default fuzz_inputs
    extra_files: dict = field(default_factory=dict)  # added to a saved capture directory (its manifest)
    progress: Callable[[Stats], None] | None = None
    progress_every: float = 5.0
    stats: Stats = field(default_factory=Stats)
    stop_requested: bool = False  # set by a signal handler: stop before the next execution
    _background: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, "fuzz-real"))

    def execute(self, fi: FuzzInput) -> tuple[str | None, dict]:
        """Run one input on the targets: (signature of a finding or None, its metadata)."""
        data = fi.data()
        st = self.stats
        st.execs += 1
        meta: dict = {"version": self.version, "machine": self.machine, "devices": self.devices, "guest": self.guest,
                      "resolved_machine": getattr(self.loader, "machine", None),
                      "seed": self.seed_name, "mutation": fi.edits, "diff_from_seed": fi.changed()}
        if self.channels:
            meta["channels"] = self.channels
        sig = None
        lv = lerr = None
        # the real destination loads (a wait on QEMU) while the loader judges in this thread
        pending = self._background.submit(self.real.run, data) if self.real is not None else None
        if self.loader is not None:
            try:
                lv, lerr = self.loader.run(data)
            except Exception as e:  # a bug of ours on hostile input: a finding of its own kind
                lv, lerr = "error", f"{type(e).__name__}: {e}"
                sig = signature("loader-error", lv, None, lerr)
            st.verdicts[f"loader:{lv}"] += 1
            meta["loader"] = {"verdict": lv, "first_violation": lerr}
        if pending is not None:
            ex = pending.result()
            st.verdicts[f"real:{ex.verdict}"] += 1
            new = ex.events - st.events
            st.events |= ex.events
            if currently_in_test_context():  # not when a finding is replayed by hand
                target(float(len(ex.events)), label="trace events reached")
                target(float(len(new)), label="new trace events")
            meta["real"] = {"verdict": ex.verdict, "first_error": ex.first_error, "exit_code": ex.exit_code,
                            "stderr": ex.stderr[-4000:], "events": len(ex.events), "seconds": round(ex.seconds, 3)}
            if ex.verdict == "hung" and lv is not None:
                # a hang is silent (no error text, often): which rule of the loader saw it
                # coming (or none) tells hangs apart — a multifd destination hangs on any bad packet
                other = (lerr or "").split(":")[0] if lv == "rejected" else f"loader {lv}"
                sig = signature("hang", ex.verdict, None, ex.first_error, other)
            elif ex.verdict in REAL_BAD:
                sig = signature(REAL_BAD[ex.verdict], ex.verdict, ex.exit_code, ex.first_error)
            elif lv in ("accepted", "rejected") and ex.verdict in ("accepted", "rejected") and lv != ex.verdict:
                code = (lerr or "").split(":")[0]
                sig = signature("model-disagreement", f"real {ex.verdict}, loader {lv}", None,
                                ex.first_error, code)
        if sig is not None:
            meta["kind"] = sig.split("|")[0]
        return sig, meta

    def _save(self, sig: str, fi: FuzzInput, meta: dict) -> Path:
        if self.real is not None:  # the exact command line to load it with plain QEMU
            stream = self.store.path(sig).with_suffix(".d" if isinstance(fi.data(), dict) else ".bin").resolve()
            meta = {**meta, "reproduce": self.real.reproduce_command(str(stream))}
        data = fi.data()
        if isinstance(data, dict):
            data = {**data, **self.extra_files}
        path, _ = self.store.save(sig, data, meta)
        if sig not in self.stats.findings:
            self.stats.new_findings += 1
        self.stats.findings[sig] = path
        return path

    def run(self, seconds: float) -> Stats:
        """Fuzz until `seconds` have passed (Stop, KeyboardInterrupt: what was found is on disk)."""
        deadline = time.monotonic() + seconds
        known = set(self.store.signatures())
        self.stats.findings.update({s: self.store.path(s) for s in known})
        last = [0.0]

        def tick() -> None:
            now = time.monotonic()
            if self.progress is not None and now - last[0] >= self.progress_every:
                last[0] = now
                self.progress(self.stats)

        # a corpus-only run re-judges what the database holds (e.g. a corpus shared through
        # Redis, against another build) without generating or shrinking anything new
        phases = ((Phase.explicit, Phase.reuse) if self.corpus_only else
                  (Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink))
        # ... and then writes nothing; a campaign keeps what it read (see SharedCorpus)
        database = self.database and (ReadOnlyDatabase(self.database) if self.corpus_only else
                                      SharedCorpus(self.database))
        while time.monotonic() < deadline and not self.stop_requested:
            @settings(database=database, max_examples=10**9, deadline=None, derandomize=False,
                      suppress_health_check=list(HealthCheck), report_multiple_bugs=True,
                      phases=phases,
                      print_blob=False, verbosity=Verbosity.quiet)
            @given((self.inputs or fuzz_inputs)(self.seed, max_edits=self.max_edits))
            def campaign(fi: FuzzInput) -> None:
                if self.stop_requested or time.monotonic() >= deadline:
                    raise Stop
                sig, meta = self.execute(fi)
                tick()
                if sig is None:
                    return
                self._save(sig, fi, meta)
                if sig not in known:  # new in this run: hypothesis shrinks it
                    raise _finding_type(sig)(sig)

            # the database key: this campaign's seed and targets, not the code's source
            campaign.hypothesis.inner_test._hypothesis_internal_add_digest = self.key.encode()
            try:
                campaign()
                return self.stats  # max_examples reached: unlikely but finished
            except Finding as e:
                known.add(str(e))
            except BaseExceptionGroup as g:
                known.update(str(x) for x in g.exceptions if isinstance(x, Finding))
            except Stop:
                break
            if self.corpus_only:  # the database was replayed once: nothing more to run
                break
        return self.stats


def directory_database(findings: Path) -> ExampleDatabase:
    return DirectoryBasedExampleDatabase(str(findings / "hypothesis-db"))
