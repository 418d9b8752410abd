"""`migconform fuzz`: set up the targets and the seed, run the campaign, print progress; and
`--replay FINDING`."""

from __future__ import annotations

import json
import re
import signal
import sys
from pathlib import Path

from conformance.errors import UsageError

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smh]?)")


def parse_duration(text: str) -> float:
    m = _DURATION.fullmatch(text.strip())
    if not m:
        raise UsageError(f"--time {text!r}: expected e.g. 30s, 10m, 2h")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def _database(args, findings: Path):
    if args.redis:
        try:
            from hypothesis.extra.redis import RedisExampleDatabase
            import redis
        except ImportError:
            raise UsageError("--redis needs the hypothesis[redis] extra (pip install 'hypothesis[redis]')") from None
        return RedisExampleDatabase(redis.Redis.from_url(args.redis))
    from conformance.tools.fuzz.campaign import directory_database

    return directory_database(findings)


def _guest(name: str, findings: Path):
    """The seed's guest; a boot disk of ours is written beside the seeds (the destinations and
    the plain-QEMU reproducers of findings open it too)."""
    from conformance.qemu import guests

    if name == "linux":
        raise UsageError("fuzz --guest linux is not supported: its boot takes minutes per seed under TCG")
    seeds = (findings / "seeds").resolve()
    seeds.mkdir(parents=True, exist_ok=True)
    try:
        return guests.guest(name, seeds)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _seed(binary, findings: Path, machine: str, devices: str, guest=None) -> Path:
    """The campaign's seed: captured once from the same binary, machine, devices and guest,
    then kept, so that a resumed run mutates the same stream. A running guest (boot programs
    of ours) runs until its heartbeat moves, then it is migrated while running: the stream
    carries device state the guest programmed."""
    from conformance.qemu import capture_stream
    from conformance.qemu import guests

    runs = guest is not None and guest.runs
    suffix = f"-{guest.name}" if runs else ""
    path = findings / "seeds" / f"seed-{binary.full_version}-{machine}-{devices}{suffix}.bin"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        if runs:
            capture_stream(binary, tmp, machine=machine, devices=devices, extra_args=guest.args, running=True,
                           stop_after=1.0, started=lambda q: guests.wait_started(q, guest, guest.boot_seconds))
        else:
            capture_stream(binary, tmp, machine=machine, devices=devices)
        tmp.replace(path)
    return path


def _multifd_seed(binary, findings: Path, machine: str, devices: str, channels: int) -> Path:
    """A multifd campaign's seed: a capture directory (main stream, `channels` channels and a
    manifest) of a migration from the binary to itself, captured once and then kept."""
    from conformance.check import manifest as mf
    from conformance.check.capture_dir import write_manifest
    from conformance.qemu.tcp_migration import capture_channels
    from conformance.tools.fuzz.store import write_directory_atomic

    path = findings / "seeds" / f"seed-{binary.full_version}-{machine}-{devices}-multifd{channels}"
    if not (path / mf.FILE).is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        caps, params = {"multifd": True}, {"multifd-channels": channels}
        cap = capture_channels(binary, binary, machine=machine, devices=devices, capabilities=caps,
                               parameters=params)
        if len(cap.multifd) != channels:
            raise UsageError(f"the seed migration opened {len(cap.multifd)} multifd channels, not {channels}")
        files = {"main.bin": cap.main, **{f"multifd{i}.bin": cap.multifd[i] for i in sorted(cap.multifd)}}
        names = tuple(f"multifd{i}.bin" for i in sorted(cap.multifd))
        m = mf.Manifest(main="main.bin", channels=names, format=mf.FORMAT,
                        source=mf.Side(binary.full_version, binary.version),
                        destination=mf.Side(binary.full_version, binary.version, cap.destination_status),
                        arguments=mf.Arguments(machine=machine, devices=devices, mem_mb=64, capabilities=caps,
                                               parameters=params),
                        channel_order=("main.bin", *names), bytes_={k: len(v) for k, v in files.items()})
        write_directory_atomic(path, files)
        write_manifest(path, mf.to_json(m))
    return path


def _load_multifd_seed(path: Path):
    from conformance.check.capture_dir import capture_files
    from strategies.fuzz_multifd import decode_multifd_seed

    main, chans = capture_files(path)
    return decode_multifd_seed(main.read_bytes(), [c.read_bytes() for c in chans])


def _finding_manifest(seed_dir: Path) -> dict[str, bytes]:
    """The seed's manifest, for every saved finding (its sizes dropped: the streams differ):
    a finding directory is then a capture that `migconform replay` starts a destination for."""
    from conformance.check import manifest as mf

    doc = json.loads((seed_dir / mf.FILE).read_text())
    doc["bytes"] = {}
    doc["destination"] = None
    return {mf.FILE: (json.dumps(doc, indent=2) + "\n").encode()}


def seed_machine(seed) -> str | None:
    from wireformat.records import Configuration

    return next((u.record.machine_type for u in seed.units[:3] if isinstance(u.record, Configuration)), None)


def _progress_printer():
    """The campaign's stats line: in rich's live display on a terminal, else a plain line
    (the campaign calls this every --progress-every seconds)."""
    from conformance.progress import Progress

    bar = Progress("fuzz", unit=" execs", every=0)

    def show(stats) -> None:
        bar.update(stats.execs, None, stats.line())

    return show


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


class _StopOnSignal:
    """SIGTERM / first Ctrl-C: the campaign stops after the execution under way (at most the
    load timeout), so no QMP exchange is cut in the middle; a second Ctrl-C stops at once.
    Either way the targets are closed (every QEMU killed) and the findings are on disk."""

    def __init__(self, campaign):
        self.campaign = campaign

    def __call__(self, signum, frame):
        if self.campaign.stop_requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.campaign.stop_requested = True
        print("\nmigconform: fuzz stopping after the current execution", file=sys.stderr, flush=True)


def cmd_fuzz(args) -> int:
    if args.replay:
        return cmd_fuzz_replay(args)
    if not args.qemu or not args.findings:
        raise UsageError("fuzz needs --qemu VERSION and --findings DIR (or --replay FINDING)")
    from conformance.qemu import require
    from conformance.qemu.fuzz_target import MultifdRealTarget, RealTarget
    from conformance.tools.fuzz.campaign import Campaign
    from conformance.tools.fuzz.loader import LoaderTarget
    from conformance.tools.fuzz.store import FindingStore
    from strategies.fuzz import decode_seed

    seconds = parse_duration(args.time)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # until the campaign runs: unwind, killing any QEMU
    findings = Path(args.findings)
    findings.mkdir(parents=True, exist_ok=True)
    binary = require(args.qemu)
    channels = args.channels
    if channels is not None and not 1 <= channels <= 255:
        raise UsageError("--channels N: 1 to 255 multifd channels")
    inputs, extra_files = None, {}
    guest = _guest(args.guest, findings)
    if guest.runs and channels:
        raise UsageError("--guest with --channels: multifd seeds are captured from a paused guest only")
    if channels:
        from strategies.fuzz_multifd import multifd_inputs

        seed_path = _multifd_seed(binary, findings, args.machine, args.devices, channels)
        try:
            mseed = _load_multifd_seed(seed_path)
        except ValueError as e:
            raise UsageError(f"{seed_path}: the seed capture does not decode: {e}") from None
        seed, main_seed, inputs, extra_files = mseed, mseed.main, multifd_inputs, _finding_manifest(seed_path)
    else:
        seed_path = _seed(binary, findings, args.machine, args.devices, guest)
        seed = main_seed = decode_seed(seed_path.read_bytes())
    real = loader = None
    old = {signal.SIGTERM: signal.SIG_DFL, signal.SIGINT: signal.getsignal(signal.SIGINT)}
    try:
        if args.target in ("real", "both"):
            kw = dict(machine=args.machine, devices=args.devices, timeout=args.exec_timeout,
                      warm=max(1, args.jobs), address_space_mb=args.memory_mb, guest_args=guest.args)
            real = (MultifdRealTarget(binary, channels=channels, **kw) if channels else RealTarget(binary, **kw)).__enter__()
        if args.target in ("loader", "both"):
            # the machine type as the destination resolved it ("pc" is an alias): the seed's own
            loader = LoaderTarget(binary.version, machine=seed_machine(main_seed) or args.machine, channels=channels)
        camp = Campaign(seed=seed, seed_name=seed_path.name, store=FindingStore(findings), version=binary.version,
                        machine=args.machine, devices=args.devices, real=real, loader=loader,
                        database=_database(args, findings), max_edits=args.max_edits,
                        key=f"{binary.full_version}|{args.machine}|{args.devices}|{args.target}"
                            + (f"|multifd{channels}" if channels else "") + (f"|{guest.name}" if guest.runs else ""),
                        guest=guest.name,
                        inputs=inputs, extra_files=extra_files, channels=channels,
                        progress=_progress_printer(), progress_every=args.progress_every,
                        corpus_only=args.corpus_only)
        for s in old:
            signal.signal(s, _StopOnSignal(camp))
        try:
            stats = camp.run(seconds)
        except KeyboardInterrupt:
            stats = camp.stats
            print("\nmigconform: fuzz interrupted; findings so far are saved", file=sys.stderr)
    finally:
        if real is not None:
            real.close()
        if loader is not None:
            loader.close()
        for s, h in old.items():
            signal.signal(s, h)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(stats.line())
    for sig, path in sorted(stats.findings.items()):
        print(f"finding {path.name}: {sig}")
    return 1 if stats.findings else 0


def cmd_fuzz_replay(args) -> int:
    """Run a saved finding again on the target(s) it names; exit 1 when it still reproduces."""
    from conformance.qemu import require
    from conformance.qemu.fuzz_target import MultifdRealTarget, RealTarget
    from conformance.tools.fuzz.loader import LoaderTarget

    jpath = Path(args.replay)
    try:
        meta = json.loads(jpath.read_text())
        where = jpath.parent / meta["stream"]
        channels = meta.get("channels")
        stream = ({p.name: p.read_bytes() for p in where.iterdir() if p.name.endswith(".bin")}
                  if channels else where.read_bytes())
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UsageError(f"{jpath}: not a fuzz finding ({e})") from None
    print(f"finding: {meta['signature']}")
    for line in meta.get("mutation", []):
        print(f"  mutation  {line}")
    for line in meta.get("diff_from_seed", []):
        print(f"  changed   {line}")
    same = True
    if "loader" in meta:
        lt = LoaderTarget(meta["version"], machine=meta.get("resolved_machine") or meta.get("machine"),
                          channels=channels)
        try:
            lv, lerr = lt.run(stream)
        finally:
            lt.close()
        print(f"loader {meta['version']}: {lv}" + (f" ({lerr})" if lerr else "") +
              f"   [saved: {meta['loader']['verdict']}]")
        same &= lv == meta["loader"]["verdict"]
    if "real" in meta:
        binary = require(meta["version"])
        guest = _guest(meta.get("guest", "paused"), jpath.parent)  # its boot disk is beside the seeds
        kw = dict(machine=meta["machine"], devices=meta["devices"], warm=1, timeout=args.exec_timeout, trace=False,
                  guest_args=guest.args)
        with (MultifdRealTarget(binary, channels=channels, **kw) if channels else RealTarget(binary, **kw)) as t:
            ex = t.run(stream)
        print(f"QEMU {binary.full_version}: {ex.verdict}" + (f" ({ex.first_error})" if ex.first_error else "") +
              f"   [saved: {meta['real']['verdict']}]")
        same &= ex.verdict == meta["real"]["verdict"]
        if meta.get("reproduce"):
            print(f"by hand: {meta['reproduce']}")
    print("reproduced" if same else "NOT reproduced (verdict differs from the saved one)")
    return 1 if same else 0
