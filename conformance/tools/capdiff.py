"""Capability differential: what the compat model says `migrate-set-capabilities` and
`migrate-set-parameters` answer, against what a real QEMU answers.

A *setting* is a set of capabilities to enable and a few migration parameters, applied to a
QEMU whose capabilities and parameters are at their start-up values, as at most two QMP
commands (parameters first or capabilities first). The *answer* is, per command, accepted or
the error ``desc`` QEMU gives. `model_answer` predicts it from `conformance.rules.compat`
(`capability_errors`, the per-release capability rules) plus the small parameter model of this
module; `conformance.qemu.CapSession` asks a real QEMU, reusing one process across settings
(`real_answer`, `check`).

What is modelled where
* capability names and the rules of `migrate_caps_check`: `conformance.rules.compat.capability_errors`
  (QEMU stops at the first error: the model's first error is its answer);
* rules the compat data marks as depending on the host or the build are resolved with an
  `Environment` (TCG vs KVM dirty ring, userfaultfd write-protect, replication support,
  compiled-in multifd compression methods), probed once per process;
* parameters (`PARAMETERS`): which exist per release, their value ranges and the parameter
  checks that read capabilities, from QEMU's qapi/migration.json (MigrationParameters, input
  rules of the QAPI visitor) and `migrate_params_check` (migration/options.c; in 7.2,
  migration/migration.c). The compat data has no parameter rules; these live here.

Normalisation of error texts (`normalise_error`, `same_error`): whitespace is collapsed and a
trailing full stop dropped on both sides; the model may add an explanation in parentheses at
the end of QEMU's text (``... does not accept value 'compress' (capability removed in 9.1)``),
which is ignored when the rest is equal. Nothing else is rewritten: any other difference in
the text is a disagreement.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Sequence

from conformance.qemu.capsession import CAPS_COMMAND, PARAMS_COMMAND, CapSession, HostFacts
from conformance.rules.compat import capabilities as _capdata
from conformance.rules.compat import capability_errors, load
from conformance.versions import version_key

__all__ = [
    "CAPS_COMMAND", "PARAMS_COMMAND", "PARAMETERS", "KNOWN_DISCREPANCIES", "Answer", "CapSetting",
    "Discrepancy", "Environment", "Mismatch", "Step", "all_capability_names", "capability_names", "check",
    "compare", "environment", "known_discrepancy", "model_answer", "normalise_error", "open_session",
    "real_answer", "run_capdiff", "same_error", "setting_strategy", "settings_upto", "add_capdiff_parser",
    "cmd_capdiff",
]


# ---------------------------------------------------------------- settings and answers

@dataclass(frozen=True)
class CapSetting:
    """Capabilities to enable (sent sorted by name, state true) and parameters to set, on a
    QEMU at its start-up state. Empty commands are not sent."""

    capabilities: tuple[str, ...] = ()
    parameters: tuple[tuple[str, Any], ...] = ()
    parameters_first: bool = False

    @classmethod
    def make(cls, caps: Iterable[str] = (), params: Mapping[str, Any] | None = None,
             parameters_first: bool = False) -> "CapSetting":
        order = {name: i for i, name in enumerate(PARAMETERS)}
        items = sorted((params or {}).items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))
        return cls(tuple(sorted(set(caps))), tuple(items), bool(parameters_first))

    def steps(self) -> list[tuple[str, dict]]:
        caps = (CAPS_COMMAND, {"capabilities": [{"capability": c, "state": True} for c in self.capabilities]})
        params = (PARAMS_COMMAND, dict(self.parameters))
        out = [params, caps] if self.parameters_first else [caps, params]
        sent = {CAPS_COMMAND: bool(self.capabilities), PARAMS_COMMAND: bool(self.parameters)}
        return [(cmd, args) for cmd, args in out if sent[cmd]]

    def describe(self) -> str:
        caps = "{" + ", ".join(self.capabilities) + "}"
        if not self.parameters:
            return f"capabilities {caps}"
        params = ", ".join(f"{k}={v}" for k, v in self.parameters)
        return (f"parameters {{{params}}} then capabilities {caps}" if self.parameters_first
                else f"capabilities {caps} then parameters {{{params}}}")

    def as_json(self) -> dict:
        return {"capabilities": list(self.capabilities), "parameters": dict(self.parameters),
                "parameters_first": self.parameters_first}


@dataclass(frozen=True)
class Step:
    command: str
    error: str | None  # None: accepted

    def __str__(self) -> str:
        return f"{self.command}: " + ("accepted" if self.error is None else f"refused: {self.error}")


@dataclass(frozen=True)
class Answer:
    steps: tuple[Step, ...]

    @property
    def accepted(self) -> bool:
        return all(s.error is None for s in self.steps)

    @property
    def errors(self) -> list[str]:
        return [s.error for s in self.steps if s.error is not None]

    def __str__(self) -> str:
        return "; ".join(map(str, self.steps)) if self.steps else "nothing sent"

    def as_json(self) -> list[dict]:
        return [{"command": s.command, "accepted": s.error is None, "error": s.error} for s in self.steps]


@dataclass(frozen=True)
class Environment:
    """Host and build facts some QEMU checks depend on (the compat data marks those rules
    with `environment`). `incoming`: the QEMU was started with -incoming (never here)."""

    kvm_dirty_ring: bool = False
    uffd_write_protect: bool = True
    replication: bool = True
    compression_methods: frozenset[str] = frozenset({"zlib", "zstd"})
    incoming: bool = False
    postcopy_supported: bool = True

    def as_json(self) -> dict:
        return {"kvm_dirty_ring": self.kvm_dirty_ring, "uffd_write_protect": self.uffd_write_protect,
                "replication": self.replication, "compression_methods": sorted(self.compression_methods),
                "incoming": self.incoming}


# ---------------------------------------------------------------- text normalisation

_WS = re.compile(r"\s+")


def normalise_error(text: str | None) -> str | None:
    if text is None:
        return None
    t = _WS.sub(" ", text).strip()
    return t[:-1] if t.endswith(".") else t


def _strip_note(text: str) -> str | None:
    """`text` without one trailing " (...)" group, or None if it has none."""
    if not text.endswith(")"):
        return None
    depth = 0
    for i in range(len(text) - 1, -1, -1):
        if text[i] == ")":
            depth += 1
        elif text[i] == "(":
            depth -= 1
            if depth == 0:
                return text[:i].rstrip() if i > 0 and text[i - 1] == " " else None
    return None


def same_error(real: str | None, model: str | None) -> bool:
    """Equal after `normalise_error`, or equal once the model's trailing "(...)" note is dropped."""
    r, m = normalise_error(real), normalise_error(model)
    if r is None or m is None:
        return r is m
    return r == m or _strip_note(m) == r


# ---------------------------------------------------------------- names

def capability_names(version: str) -> list[str]:
    """Capabilities the compat data says the release offers, in data order."""
    return list(_capdata().available(version))


def all_capability_names() -> list[str]:
    """Every capability name the compat data knows, for any release."""
    return list(_capdata().capabilities)


# ---------------------------------------------------------------- parameter model

@dataclass(frozen=True)
class ParamSpec:
    """A migration parameter as migrate-set-parameters reads it."""

    name: str
    since: str
    kind: str  # "uint8" or "enum"
    values: tuple[tuple[str, str], ...] = ()  # enum: (value, since)
    build_optional: frozenset[str] = frozenset()  # enum values that exist only in some builds


# Declaration order of the QAPI struct: QEMU reports the first bad member in this order.
PARAMETERS: dict[str, ParamSpec] = {
    "multifd-channels": ParamSpec("multifd-channels", "4.0", "uint8"),
    "multifd-compression": ParamSpec(
        "multifd-compression", "5.0", "enum",
        (("none", "5.0"), ("zlib", "5.0"), ("zstd", "5.0"), ("qpl", "9.1"), ("uadk", "9.1"), ("qatzip", "9.2")),
        frozenset({"zstd", "qpl", "uadk", "qatzip"})),
    "zero-page-detection": ParamSpec("zero-page-detection", "9.0", "enum",
                                     (("none", "9.0"), ("legacy", "9.0"), ("multifd", "9.0"))),
}

ZERO_COPY_ERROR = "Zero copy only available for non-compressed non-TLS multifd migration"
MAPPED_RAM_PARAM_ERROR = "Mapped-ram only available for non-compressed non-TLS multifd migration"
BACKGROUND_SNAPSHOT_KERNEL_ERROR = "Background-snapshot is not supported by host kernel"


def parameter_exists(version: str, name: str) -> bool:
    spec = PARAMETERS[name]
    if name == "zero-page-detection":  # the compat data knows this one (a migration property too)
        info = load(version).migration_properties.get(name)
        if info is not None:
            return bool(info["exists"])
    return version_key(spec.since) <= version_key(version)


def parameter_values(version: str, name: str, env: Environment) -> list[str]:
    spec = PARAMETERS[name]
    out = []
    for value, since in spec.values:
        if version_key(since) > version_key(version):
            continue
        if value in spec.build_optional and name == "multifd-compression" and value not in env.compression_methods:
            continue
        out.append(value)
    return out


def _param_error(version: str, params: Mapping[str, Any], caps: set[str], current: Mapping[str, Any],
                 env: Environment) -> str | None:
    """The error of migrate-set-parameters with `params` while `caps` are on and `current`
    are the parameters in force, or None. Order: QAPI type checks member by member in
    declaration order, then members the release lacks, then the parameter checks."""
    for name, spec in PARAMETERS.items():
        if name not in params or not parameter_exists(version, name):
            continue
        value = params[name]
        if spec.kind == "uint8" and not (isinstance(value, int) and 0 <= value <= 255):
            return f"Parameter '{name}' expects uint8_t"
        if spec.kind == "enum" and value not in parameter_values(version, name, env):
            return f"Parameter '{name}' does not accept value '{value}'"
    for name in params:
        if name not in PARAMETERS or not parameter_exists(version, name):
            return f"Parameter '{name}' is unexpected"
    if params.get("multifd-channels") == 0:
        return "Parameter 'multifd_channels' expects a value between 1 and 255"
    new_compression = params.get("multifd-compression", current.get("multifd-compression", "none"))
    if "zero-copy-send" in caps and new_compression != "none":
        return ZERO_COPY_ERROR  # checked on the values being set
    if "mapped-ram" in caps and current.get("multifd-compression", "none") != "none":
        return MAPPED_RAM_PARAM_ERROR  # checked on the values in force (migrate_params_check reads them)
    return None


# ---------------------------------------------------------------- capability model

def _rules(version: str, patches: Mapping[str, Mapping[str, Any]] | None = None) -> list[Mapping[str, Any]]:
    """The compat data's capability rules for `version`, in check order; `patches` (rule id ->
    replacement keys) describe a proposed data fix."""
    if not patches:
        return list(_capdata().rules_for(version))
    v = version_key(version)
    out = []
    for r in _capdata().rules:
        r = {**r, **patches.get(r.get("id", ""), {})}
        if version_key(r["from"]) <= v and (r["to"] is None or v <= version_key(r["to"])):
            out.append(r)
    return out


def _fires(rule: Mapping[str, Any], caps: set[str]) -> bool:
    return set(rule["when"]["all"]) <= caps and not (set(rule["when"]["none"]) & caps)


def _env_keeps(rule: Mapping[str, Any], env: Environment) -> bool:
    """Whether a rule the compat data marks as environment-dependent fires in `env`."""
    rid = rule.get("id", "")
    if not rule.get("environment"):
        return True
    if rid == "dirty-limit-needs-kvm-dirty-ring":
        return not env.kvm_dirty_ring
    if rid == "colo-needs-replication":
        return not env.replication
    if rid == "postcopy-needs-userfaultfd":
        return env.incoming and not env.postcopy_supported
    if rid.startswith("background-snapshot-vs-"):
        return env.uffd_write_protect  # else the kernel check refuses first (see _cap_error)
    return False  # an environment this module cannot judge: assume the host/build has what the rule needs


def _cap_error(version: str, caps: set[str], params: Mapping[str, Any], env: Environment,
               patches: Mapping[str, Mapping[str, Any]] | None = None) -> str | None:
    """First error of migrate-set-capabilities enabling `caps` (from all-off) with `params` in force."""
    rules = _rules(version, patches)
    errors = capability_errors(version, caps, include_environment=True)
    unknown = caps - set(_capdata().available(version))
    if not patches and [r["error"] for r in rules if _fires(r, caps)] != errors[len(unknown):]:
        raise RuntimeError("conformance.rules.compat.capability_errors no longer lists the unknown names and then "
                           "one error per rule in data order: capdiff needs updating")
    if unknown:
        return errors[0]  # the QAPI visitor refuses the first unknown name (names are sent sorted)
    ranked: list[tuple[float, str]] = [(i, r["error"]) for i, r in enumerate(rules)
                                       if _fires(r, caps) and _env_keeps(r, env)]
    # an environment check that precedes a block of rules
    bs = [i for i, r in enumerate(rules) if str(r.get("id", "")).startswith("background-snapshot-vs-")]
    if "background-snapshot" in caps and not env.uffd_write_protect and bs:
        ranked.append((bs[0] - 0.5, BACKGROUND_SNAPSHOT_KERNEL_ERROR))
    # a parameter the capability check reads: zero-copy-send refuses a compressing multifd
    zc = [i for i, r in enumerate(rules) if str(r.get("id", "")).startswith("zero-copy-send")]
    if "zero-copy-send" in caps and params.get("multifd-compression", "none") != "none" and zc:
        ranked.append((zc[0] - 0.25, ZERO_COPY_ERROR))
    return min(ranked)[1] if ranked else None


def model_answer(version: str, setting: CapSetting, env: Environment | None = None,
                 initial_params: Mapping[str, Any] | None = None, *,
                 patches: Mapping[str, Mapping[str, Any]] | None = None) -> Answer:
    """The model's answer to `setting` on a QEMU `version` started with `initial_params`
    (`patches`: a proposed fix of the compat rules, rule id -> replaced keys)."""
    env = env or Environment()
    caps: set[str] = set()
    params: dict[str, Any] = dict(initial_params or {})
    steps = []
    for command, args in setting.steps():
        if command == CAPS_COMMAND:
            want = {c["capability"] for c in args["capabilities"]}
            err = _cap_error(version, caps | want, params, env, patches)
            if err is None:
                caps |= want
        else:
            err = _param_error(version, args, caps, params, env)
            if err is None:
                params.update(args)
        steps.append(Step(command, err))
    return Answer(tuple(steps))


# ---------------------------------------------------------------- known model/data errors

@dataclass(frozen=True)
class Discrepancy:
    """A disagreement between a real QEMU and the model that is the model's (or its data's)
    fault, recorded until conformance/rules/compat is fixed. `patches` is the proposed data fix:
    a mismatch is explained by this entry only if the model with the fix gives the real answer."""

    id: str
    versions: tuple[str, ...]
    patches: Mapping[str, Mapping[str, Any]]
    example: CapSetting
    real: str  # the real answer to `example` (its first error)
    model: str  # the model's answer to `example` today
    explanation: str


# Recorded model errors (each with the data fix that makes the model agree). The first one
# found, zero-copy-send-vs-xbzrle ending at 8.1, is fixed in conformance/rules/compat's data.
KNOWN_DISCREPANCIES: tuple[Discrepancy, ...] = ()


def known_discrepancy(version: str, setting: CapSetting, real: Answer, env: Environment | None = None,
                      initial_params: Mapping[str, Any] | None = None) -> Discrepancy | None:
    """The recorded model error that explains this disagreement: the model with its fix agrees."""
    for d in KNOWN_DISCREPANCIES:
        if version not in d.versions:
            continue
        fixed = model_answer(version, setting, env, initial_params, patches=d.patches)
        if _agree(real, fixed):
            return d
    return None


# ---------------------------------------------------------------- comparison

@dataclass(frozen=True)
class Mismatch:
    version: str
    setting: CapSetting
    real: Answer
    model: Answer
    known: Discrepancy | None = None

    def __str__(self) -> str:
        head = f"QEMU {self.version}: {self.setting.describe()}"
        tail = f"\n  known model error [{self.known.id}]: {self.known.explanation}" if self.known else ""
        return f"{head}\n  real:  {self.real}\n  model: {self.model}{tail}"

    def as_json(self) -> dict:
        return {"version": self.version, "setting": self.setting.as_json(), "real": self.real.as_json(),
                "model": self.model.as_json(), "known": self.known.id if self.known else None}


def _agree(real: Answer, model: Answer) -> bool:
    return len(real.steps) == len(model.steps) and all(
        r.command == m.command and same_error(r.error, m.error) for r, m in zip(real.steps, model.steps))


def compare(version: str, setting: CapSetting, real: Answer, model: Answer, env: Environment | None = None,
            initial_params: Mapping[str, Any] | None = None) -> Mismatch | None:
    """None when both accept/refuse every command alike with the same error text; else the
    mismatch, with the known model error that explains it if there is one."""
    if _agree(real, model):
        return None
    return Mismatch(version, setting, real, model, known_discrepancy(version, setting, real, env, initial_params))


# ---------------------------------------------------------------- a real QEMU

def open_session(binary, machine: str = "pc-i440fx-7.2") -> CapSession:
    """A CapSession (conformance.qemu) that restores the parameters of `PARAMETERS` too."""
    return CapSession(binary, machine, parameters=PARAMETERS)


def environment(host: HostFacts | None) -> Environment:
    """The model's Environment for what a real QEMU says of its host and build."""
    if host is None:
        return Environment()
    return Environment(kvm_dirty_ring=host.kvm_dirty_ring, uffd_write_protect=host.uffd_write_protect,
                       replication=host.replication, compression_methods=host.compression_methods)


def real_answer(session: CapSession, setting: CapSetting) -> Answer:
    """The real answer to `setting`, from the start-up state."""
    return Answer(tuple(Step(command, error) for command, error in session.apply(setting.steps())))


def check(session: CapSession, setting: CapSetting) -> tuple[Answer, Answer, Mismatch | None]:
    """(real, model, mismatch or None) for one setting."""
    real = real_answer(session, setting)
    env = environment(session.host)
    model = model_answer(session.version, setting, env, session.initial_params)
    return real, model, compare(session.version, setting, real, model, env, session.initial_params)


# ---------------------------------------------------------------- generation

PARAMETER_DRAWS: dict[str, tuple[Any, ...]] = {
    "multifd-channels": (0, 1, 2, 4, 8, 16, 64, 255, 256, 1000),
    "multifd-compression": ("none", "zlib", "zstd", "qpl", "uadk", "qatzip", "lz4"),
    "zero-page-detection": ("none", "legacy", "multifd", "all"),
}
UNKNOWN_CAPABILITY = "x-no-such-capability"


def setting_strategy(version: str, *, max_caps: int = 7, foreign: bool = True, parameters: bool = True):
    """Hypothesis strategy of CapSetting for `version`: mostly the release's own capabilities,
    sometimes a name of another release (or none at all), and optionally a few parameters."""
    from hypothesis import strategies as st

    own = capability_names(version)
    other = [c for c in all_capability_names() if c not in own] + [UNKNOWN_CAPABILITY]
    # rules meet other rules: start from the capabilities of up to three rules of the release
    # (so that several rules fire at once and their order matters), plus a few random ones
    groups = sorted({tuple(sorted(r["when"]["all"])) for r in _capdata().rules_for(version)
                     if set(r["when"]["all"]) <= set(own)})
    seeded = st.builds(lambda gs, extra: frozenset().union(*map(frozenset, gs), extra),
                       st.lists(st.sampled_from(groups), max_size=3),
                       st.sets(st.sampled_from(own), max_size=max(0, max_caps - 4)))
    caps = st.one_of(st.sets(st.sampled_from(own), max_size=max_caps), seeded) if groups \
        else st.sets(st.sampled_from(own), max_size=max_caps)
    if foreign:
        caps = st.builds(lambda a, b: a | b, caps,
                         st.one_of(st.just(frozenset()), st.just(frozenset()), st.just(frozenset()),
                                   st.sets(st.sampled_from(other), min_size=1, max_size=1)))
    params = (st.fixed_dictionaries({}, optional={k: st.sampled_from(v) for k, v in PARAMETER_DRAWS.items()})
              if parameters else st.just({}))
    return st.builds(CapSetting.make, caps, params, st.booleans())


def settings_upto(version: str, max_caps: int = 2, *, foreign: bool = True) -> Iterator[CapSetting]:
    """Every capability set of the release up to `max_caps` names (and each foreign name alone),
    then each parameter value alone: a deterministic sweep for the CLI."""
    own = capability_names(version)
    for k in range(1, max_caps + 1):
        for combo in itertools.combinations(own, k):
            yield CapSetting.make(combo)
    if foreign:
        for name in [c for c in all_capability_names() if c not in own] + [UNKNOWN_CAPABILITY]:
            yield CapSetting.make([name])
    for name, values in PARAMETER_DRAWS.items():
        for value in values:
            yield CapSetting.make((), {name: value})


# ---------------------------------------------------------------- driver

@dataclass
class CapdiffReport:
    version: str
    full_version: str
    environment: Environment
    settings: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)
    restarts: int = 0
    seconds: float = 0.0

    @property
    def unexplained(self) -> list[Mismatch]:
        return [m for m in self.mismatches if m.known is None]

    def as_json(self) -> dict:
        return {"version": self.version, "full_version": self.full_version,
                "environment": self.environment.as_json(), "settings": self.settings,
                "restarts": self.restarts, "seconds": round(self.seconds, 3),
                "mismatches": [m.as_json() for m in self.mismatches]}


def run_capdiff(binary, settings: Iterable[CapSetting], *, machine: str = "pc-i440fx-7.2") -> CapdiffReport:
    """Run every setting on one real QEMU and compare with the model."""
    import time

    t0 = time.monotonic()
    with open_session(binary, machine) as s:
        rep = CapdiffReport(binary.version, binary.full_version, environment(s.host))
        for setting in settings:
            _, _, mm = check(s, setting)
            rep.settings += 1
            if mm is not None:
                rep.mismatches.append(mm)
        rep.restarts = s.restarts
    rep.seconds = time.monotonic() - t0
    return rep


def format_report(reports: Sequence[CapdiffReport]) -> str:
    lines = []
    for rep in reports:
        known = len(rep.mismatches) - len(rep.unexplained)
        lines.append(f"QEMU {rep.full_version}: {rep.settings} settings, {len(rep.unexplained)} disagreements"
                     f"{f' (+{known} known model errors)' if known else ''}, {rep.restarts} restarts, "
                     f"{rep.seconds:.1f} s")
        env = rep.environment
        lines.append(f"  environment: {'KVM dirty ring' if env.kvm_dirty_ring else 'no KVM dirty ring'}, "
                     f"userfaultfd write-protect {'yes' if env.uffd_write_protect else 'no'}, "
                     f"replication {'yes' if env.replication else 'no'}, "
                     f"multifd compression {', '.join(sorted(env.compression_methods)) or 'none'}")
        for m in rep.mismatches:
            lines.extend("  " + ln for ln in str(m).splitlines())
    return "\n".join(lines)


# ---------------------------------------------------------------- CLI

def add_capdiff_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "capdiff", help="compare the compat model's capability/parameter rules with real QEMU binaries "
        "(exit 0 agree, 1 disagreement, 2 error)")
    p.add_argument("--qemu", action="append", metavar="VERSION=PATH", help="QEMU binary for VERSION (repeatable)")
    p.add_argument("--version", action="append", dest="versions", metavar="VERSION",
                   help="check this version (repeatable; default every installed version the model knows)")
    p.add_argument("--max-caps", type=int, default=2, metavar="N",
                   help="every set of up to N capabilities (default 2; 3 takes about 20 s per version)")
    p.add_argument("--machine", default="pc-i440fx-7.2", help="machine type of the QEMU asked (default pc-i440fx-7.2)")
    p.add_argument("--strict", action="store_true", help="exit 1 also for recorded (known) model errors")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.set_defaults(func=cmd_capdiff)


def cmd_capdiff(args) -> int:
    import json
    import sys

    from conformance.rules.compat import UnknownVersion, versions
    from conformance.qemu import QemuError, QemuNotFound, discover, parse_pairs

    try:
        pairs = parse_pairs(args.qemu or [], what="--qemu")
        found = discover(pairs)
        wanted = args.versions or [v for v in sorted(found, key=version_key) if v in versions()]
        if not wanted:
            raise QemuNotFound("no installed QEMU of a version the model knows (pass --qemu VERSION=PATH)")
        reports = []
        for v in wanted:
            if v not in versions():
                raise UnknownVersion(f"no compat data for QEMU {v}")
            if v not in found:
                raise QemuNotFound(f"QEMU {v} not found (pass --qemu {v}=PATH)")
            reports.append(run_capdiff(found[v], settings_upto(v, max(0, args.max_caps)), machine=args.machine))
    except (QemuNotFound, QemuError, UnknownVersion, ValueError) as e:
        print(f"migconform: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"reports": [r.as_json() for r in reports]}, indent=2))
    else:
        print(format_report(reports))
    bad = [m for r in reports for m in (r.mismatches if args.strict else r.unexplained)]
    return 1 if bad else 0
