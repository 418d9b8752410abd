"""Version x machine-type compatibility model (pure Python, no processes).

The data (``data/qemu-X.Y.json``, ``data/capabilities.json``) records, per QEMU release, the
x86 machine types it offers, the ``hw_compat_X_Y`` / ``pc_compat_X_Y`` property lists it
defines, the defaults of the migration object's format knobs and the capability rules of
``migrate-set-capabilities``. Every fact carries its ``source`` and ``verified`` (checked on
one of the project's real binaries).

QEMU's mechanism, as modelled here: a versioned machine type of compat level L applies, on a
QEMU release R, the board defaults of its family and then every ``hw_compat_X_Y`` and
``pc_compat_X_Y`` list that R defines with L <= X.Y, newest list first, so that an older
list overrides a newer one for the same (driver, property); user ``-global`` settings are
applied last. Both ends of a migration using the same machine type therefore agree on every
compat-governed knob — unless a ``-global`` on one side changes one.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from importlib import resources
from types import MappingProxyType
from typing import Any, Iterable, Mapping, Sequence

from conformance.versions import version_key

__all__ = [
    "CompatEntry", "MachineType", "VersionData", "Capabilities", "Prediction", "UnknownVersion",
    "UnknownMachine", "WIRE_PROPERTIES", "versions", "load", "capabilities", "machine_types",
    "resolve_machine", "effective_properties", "wire_properties", "capability_errors",
    "parse_globals", "predict",
]

DATA_PACKAGE = "conformance.rules.compat"
SCHEMA = 1

# Properties of the `migration` object that change the bytes of the stream (migration/options.c,
# set per machine type by the hw_compat_* arrays of hw/core/machine.c). zero-page-detection is a migration parameter
# that is also a property of the object (hw_compat_8_2 sets it).
WIRE_PROPERTIES: tuple[str, ...] = (
    "send-configuration",
    "send-section-footer",
    "store-global-state",
    "send-switchover-start",
    "multifd-flush-after-each-section",
    "x-preempt-pre-7-2",
    "zero-page-detection",
    "multifd-clean-tls-termination",
)

_TRUE = {"on", "true", "yes", "y"}
_FALSE = {"off", "false", "no", "n"}
_BOOL_KNOBS = frozenset(WIRE_PROPERTIES) - {"zero-page-detection"}


class UnknownVersion(KeyError):
    """No data file for that QEMU version."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown version"


class UnknownMachine(KeyError):
    """The QEMU version does not offer that machine type."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown machine type"


@dataclass(frozen=True)
class CompatEntry:
    driver: str
    property: str
    value: str
    source: str
    verified: bool
    optional: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return (self.driver, self.property)


@dataclass(frozen=True)
class MachineType:
    name: str
    family: str  # "pc-i440fx" or "pc-q35"
    compat_level: str  # "4.0" for pc-q35-4.0.1, else the version in the name
    deprecated: bool
    source: str
    verified: bool

    @property
    def level(self) -> tuple[int, ...]:
        return version_key(self.compat_level)


@dataclass(frozen=True)
class VersionData:
    version: str
    basis: str
    machine_types: tuple[MachineType, ...]
    aliases: Mapping[str, str]
    family_defaults: Mapping[str, tuple[CompatEntry, ...]]
    compat_lists: Mapping[str, tuple[CompatEntry, ...]]  # newest list first
    list_sources: Mapping[str, str]
    migration_properties: Mapping[str, Mapping[str, Any]]
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @property
    def vt(self) -> tuple[int, ...]:
        return version_key(self.version)

    def machine(self, name: str) -> MachineType:
        """The machine type `name` (an alias such as "pc" resolves to its target)."""
        target = self.aliases.get(name, name)
        for m in self.machine_types:
            if m.name == target:
                return m
        raise UnknownMachine(f"QEMU {self.version}: unsupported machine type {name!r}")

    def has_machine(self, name: str) -> bool:
        try:
            self.machine(name)
            return True
        except UnknownMachine:
            return False

    def applied_lists(self, machine: str) -> list[str]:
        """Names of the compat lists a machine type applies, in application order."""
        m = self.machine(machine)
        return [n for n in self.compat_lists if _list_level(n) >= m.level]

    def property_exists(self, driver: str, prop: str) -> bool | None:
        """Whether the release has that property: known for the migration object's knobs
        recorded in `migration_properties`, None (unknown) otherwise."""
        if driver == "migration" and prop in self.migration_properties:
            return bool(self.migration_properties[prop]["exists"])
        return None


@dataclass(frozen=True)
class Capabilities:
    versions: tuple[str, ...]
    capabilities: Mapping[str, Mapping[str, Any]]
    rules: tuple[Mapping[str, Any], ...]
    other_rules: tuple[Mapping[str, Any], ...]

    def available(self, version: str) -> list[str]:
        v = version_key(version)
        out = []
        for name, c in self.capabilities.items():
            if version_key(c["since"]) <= v and (c["removed"] is None or v < version_key(c["removed"])):
                out.append(name)
        return out

    def rules_for(self, version: str) -> list[Mapping[str, Any]]:
        v = version_key(version)
        return [r for r in self.rules
                if version_key(r["from"]) <= v and (r["to"] is None or v <= version_key(r["to"]))]


@dataclass
class Prediction:
    compatible: bool
    reasons: list[str]
    warnings: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.compatible


# ---------------------------------------------------------------- loading

def _list_level(name: str) -> tuple[int, int]:
    _, major, minor = name.rsplit("_", 2)
    return (int(major), int(minor))


def _data_dir():
    return resources.files(DATA_PACKAGE).joinpath("data")


@functools.lru_cache(maxsize=1)
def versions() -> tuple[str, ...]:
    """QEMU versions with a data file, oldest first."""
    names = [p.name for p in _data_dir().iterdir() if p.name.startswith("qemu-") and p.name.endswith(".json")]
    return tuple(sorted((n[len("qemu-"):-len(".json")] for n in names), key=version_key))


def _normalize_version(version: str) -> str:
    v = str(version).strip()
    parts = v.split(".")
    if len(parts) >= 2 and all(p.isdigit() for p in parts[:2]):
        v = f"{int(parts[0])}.{int(parts[1])}"
    if v not in versions():
        raise UnknownVersion(f"no compat data for QEMU {version!r} (have {', '.join(versions())})")
    return v


def _entry(d: Mapping[str, Any], default_source: str = "") -> CompatEntry:
    return CompatEntry(driver=d["driver"], property=d["property"], value=str(d["value"]),
                       source=d.get("source", default_source), verified=bool(d.get("verified", False)),
                       optional=bool(d.get("optional", False)))


def load(version: str) -> VersionData:
    """The data of one QEMU release ("10.0"; "10.0.2" is accepted and means 10.0)."""
    return _load(_normalize_version(version))


@functools.lru_cache(maxsize=None)
def _load(v: str) -> VersionData:
    raw = json.loads(_data_dir().joinpath(f"qemu-{v}.json").read_text(encoding="utf-8"))
    if raw.get("schema") != SCHEMA or raw.get("version") != v:
        raise ValueError(f"qemu-{v}.json: schema {raw.get('schema')!r} / version {raw.get('version')!r} unexpected")
    lists = {n: tuple(_entry(e, L["source"]) for e in L["entries"]) for n, L in raw["compat_lists"].items()}
    # newest list first (hw before pc of the same release, as the machine option functions add them)
    order = sorted(lists, key=lambda n: (_list_level(n), n.startswith("hw_")), reverse=True)
    return VersionData(
        version=v,
        basis=raw["basis"],
        machine_types=tuple(MachineType(name=m["name"], family=m["family"], compat_level=m["compat_level"],
                                        deprecated=bool(m["deprecated"]), source=m["source"],
                                        verified=bool(m["verified"])) for m in raw["machine_types"]),
        aliases=MappingProxyType(dict(raw["aliases"])),
        family_defaults=MappingProxyType({f: tuple(_entry(e) for e in es) for f, es in raw["family_defaults"].items()}),
        compat_lists=MappingProxyType({n: lists[n] for n in order}),
        list_sources=MappingProxyType({n: raw["compat_lists"][n]["source"] for n in order}),
        migration_properties=MappingProxyType({k: MappingProxyType(dict(d)) for k, d in raw["migration_properties"].items()}),
        raw=MappingProxyType(raw),
    )


@functools.lru_cache(maxsize=1)
def capabilities() -> Capabilities:
    raw = json.loads(_data_dir().joinpath("capabilities.json").read_text(encoding="utf-8"))
    if raw.get("schema") != SCHEMA:
        raise ValueError(f"capabilities.json: schema {raw.get('schema')!r} unexpected")
    return Capabilities(versions=tuple(raw["versions"]), capabilities=MappingProxyType(raw["capabilities"]),
                        rules=tuple(raw["rules"]), other_rules=tuple(raw["other_rules"]))


# ---------------------------------------------------------------- queries

def machine_types(version: str, *, include_deprecated: bool = True) -> list[str]:
    """Versioned pc-i440fx-* / pc-q35-* machine types the release offers (no aliases)."""
    return [m.name for m in load(version).machine_types if include_deprecated or not m.deprecated]


def resolve_machine(version: str, machine: str) -> str:
    return load(version).machine(machine).name


Global = tuple[str, str, str]


def parse_globals(globals_: Iterable[Any] | Mapping[Any, Any] = ()) -> list[Global]:
    """User -global settings as (driver, property, value) triples. Accepts "DRIVER.PROP=VALUE",
    "driver=D,property=P,value=V", (driver, property, value) triples, or a mapping
    {(driver, property): value} / {"DRIVER.PROP": value}."""
    out: list[Global] = []
    items: Iterable[Any]
    if isinstance(globals_, Mapping):
        items = [((k if isinstance(k, tuple) else tuple(str(k).split(".", 1))) + (v,)) for k, v in globals_.items()]
    else:
        items = globals_
    for g in items:
        if isinstance(g, str):
            if g.startswith("driver="):
                kv = dict(p.split("=", 1) for p in g.split(",") if "=" in p)
                try:
                    out.append((kv["driver"], kv["property"], kv["value"]))
                except KeyError:
                    raise ValueError(f"-global {g!r}: needs driver=, property= and value=") from None
                continue
            head, eq, value = g.partition("=")
            driver, dot, prop = head.partition(".")
            if not eq or not dot or not driver or not prop:
                raise ValueError(f"-global {g!r}: expected DRIVER.PROPERTY=VALUE")
            out.append((driver, prop, value))
        else:
            driver, prop, value = g
            out.append((str(driver), str(prop), str(value)))
    return out


def effective_properties(version: str, machine: str, globals_: Iterable[Any] | Mapping[Any, Any] = ()
                         ) -> dict[tuple[str, str], str]:
    """(driver, property) -> value set by the machine type's compat machinery on that release,
    with user -global settings applied last. Properties no compat list touches are absent (their
    value is the device's own default)."""
    vd = load(version)
    m = vd.machine(machine)
    out: dict[tuple[str, str], str] = {}
    for e in vd.family_defaults.get(m.family, ()):
        out[e.key] = e.value
    for name in vd.applied_lists(m.name):
        for e in vd.compat_lists[name]:
            out[e.key] = e.value
    for driver, prop, value in parse_globals(globals_):
        out[(driver, prop)] = value
    return out


def _effective_with_origin(vd: VersionData, machine: str, globals_: Sequence[Global]
                           ) -> dict[tuple[str, str], tuple[str, str]]:
    """(driver, property) -> (value, where it came from: a list name, "family-defaults" or "-global")."""
    m = vd.machine(machine)
    out: dict[tuple[str, str], tuple[str, str]] = {}
    for e in vd.family_defaults.get(m.family, ()):
        out[e.key] = (e.value, "family-defaults")
    for name in vd.applied_lists(m.name):
        for e in vd.compat_lists[name]:
            out[e.key] = (e.value, name)
    for driver, prop, value in globals_:
        out[(driver, prop)] = (value, "-global")
    return out


def _norm(knob: str, value: Any) -> str:
    s = str(value).strip().lower() if not isinstance(value, bool) else ("on" if value else "off")
    if knob in _BOOL_KNOBS:
        if s in _TRUE:
            return "on"
        if s in _FALSE:
            return "off"
    return s


def wire_properties(version: str, machine: str, globals_: Iterable[Any] | Mapping[Any, Any] = ()
                    ) -> dict[str, str]:
    """The migration knobs that change the stream, with their effective values on that release
    for that machine type (booleans normalised to "on"/"off"). For a release that lacks a knob,
    the value is the behaviour it has (e.g. send-switchover-start "off" before 10.0). A -global
    naming a knob the release lacks is ignored here (QEMU refuses to start; see predict)."""
    vd = load(version)
    eff = effective_properties(version, machine)
    user = {(d, p): v for d, p, v in parse_globals(globals_)}
    out = {}
    for knob in WIRE_PROPERTIES:
        info = vd.migration_properties[knob]
        if info["exists"]:
            value = user.get(("migration", knob), eff.get(("migration", knob), info["value"]))
        else:
            value = info["value"]
        out[knob] = _norm(knob, value)
    return out


def capability_errors(version: str, caps: Iterable[str], *, include_environment: bool = False) -> list[str]:
    """Errors migrate-set-capabilities gives on that release for the capability set, in the
    order QEMU checks them (QEMU itself stops at the first). Rules that depend on the host or
    the build (KVM dirty ring, userfaultfd, replication) are left out unless asked for."""
    capdata = capabilities()
    caps = set(caps)
    v = _normalize_version(version)
    out = []
    avail = set(capdata.available(v))
    for c in sorted(caps - avail):
        known = capdata.capabilities.get(c)
        if known is None:
            out.append(f"Parameter 'capability' does not accept value '{c}'")
        else:
            removed = known["removed"] and version_key(v) >= version_key(known["removed"])
            when = f"removed in {known['removed']}" if removed else f"new in {known['since']}"
            out.append(f"Parameter 'capability' does not accept value '{c}' (capability {when})")
    for r in capdata.rules_for(v):
        if r.get("environment") and not include_environment:
            continue
        if set(r["when"]["all"]) <= caps and not (set(r["when"]["none"]) & caps):
            out.append(r["error"])
    return out


def _environment_errors(version: str, caps: set[str], side: str) -> list[str]:
    out = []
    for r in capabilities().rules_for(version):
        if not r.get("environment") or r.get("side", side) != side:
            continue
        if set(r["when"]["all"]) <= caps and not (set(r["when"]["none"]) & caps):
            out.append(f"{r['error']} ({r['environment']})")
    return out


# ---------------------------------------------------------------- prediction

def _fmt(side: str, version: str, value: str) -> str:
    return f"{value} on the {side} ({version})"


def predict(src_version: str, dst_version: str, machine: str, capabilities: Iterable[str] = (),
            globals_: Iterable[Any] | Mapping[Any, Any] = (), *,
            dst_globals: Iterable[Any] | Mapping[Any, Any] | None = None, tls: bool = False) -> Prediction:
    """Will a guest started on QEMU `src_version` with `machine` migrate to `dst_version`?

    `capabilities` are set on both ends (as a migration requires); `globals_` are the source's
    -global settings and `dst_globals` the destination's (default: the same command line, i.e.
    `globals_`). `tls` says the migration uses TLS (tls-creds). Reasons name the property or
    rule, both values and both versions; warnings list differences that do not stop the load.
    """
    reasons: list[str] = []
    warnings: list[str] = []
    src = load(src_version)
    dst = load(dst_version)
    sv, dv = src.version, dst.version
    caps = set(capabilities)
    sg = parse_globals(globals_)
    dg = sg if dst_globals is None else parse_globals(dst_globals)

    # 1. machine types
    if not src.has_machine(machine):
        reasons.append(f"source QEMU {sv}: unsupported machine type {machine!r}")
    if not dst.has_machine(machine):
        reasons.append(f"destination QEMU {dv}: unsupported machine type {machine!r} "
                       f"(QEMU {dv} offers {dst.machine_types[0].name} .. {dst.aliases['pc']} / {dst.aliases['q35']})")
    if reasons:
        return Prediction(False, reasons, warnings)
    sm, dm = src.machine(machine).name, dst.machine(machine).name
    if sm != dm:
        reasons.append(f"machine alias {machine!r} means {sm} on the source ({sv}) but {dm} on the destination "
                       f"({dv}): name the versioned machine type on both ends")
        return Prediction(False, reasons, warnings)
    for vd, side in ((src, "source"), (dst, "destination")):
        if vd.machine(sm).deprecated:
            warnings.append(f"{sm} is deprecated on the {side} ({vd.version})")

    # 2. -global settings naming a migration property the release lacks: QEMU does not start
    for vd, side, gl in ((src, "source", sg), (dst, "destination", dg)):
        for d, p, val in gl:
            if vd.property_exists(d, p) is False:
                reasons.append(f"{side} QEMU {vd.version} has no property {d}.{p}: it refuses "
                               f"-global {d}.{p}={val} (\"can't apply global {d}.{p}={val}: "
                               f"Property '{d}.{p}' not found\")")

    # 3. capability rules of each end
    for vd, side in ((src, "source"), (dst, "destination")):
        for err in capability_errors(vd.version, caps):
            reasons.append(f"{side} QEMU {vd.version} refuses capabilities {sorted(caps)}: {err}")
        for err in _environment_errors(vd.version, caps, side):
            warnings.append(f"{side} QEMU {vd.version}: capabilities {sorted(caps)} depend on the host/build: {err}")

    # 4. wire knobs
    sw = wire_properties(sv, sm, sg)
    dw = wire_properties(dv, dm, dg)
    multifd = "multifd" in caps
    for knob in WIRE_PROPERTIES:
        s, d = sw[knob], dw[knob]
        both = f"{knob}: {_fmt('source', sv, s)}, {_fmt('destination', dv, d)}"
        fatal: str | None = None
        note: str | None = None
        if knob == "send-configuration" and s != d:
            fatal = ("destination fails with 'Configuration section missing'" if s == "off"
                     else "destination reads the CONFIGURATION record as a section type: 'Unknown savevm section type 7'")
        elif knob == "send-section-footer" and s != d:
            fatal = ("destination fails with 'Missing section footer for ...'" if s == "off"
                     else "destination reads the footer byte as a section type: 'Unknown savevm section type 126'")
        elif knob == "store-global-state" and s != d:
            note = ("the globalstate section is sent only when the source has it on; the destination loads it "
                    "whenever present and otherwise assumes the source's run state was 'running'")
        elif knob == "send-switchover-start":
            if s == "on" and not dst.migration_properties[knob]["exists"]:
                fatal = (f"the source sends MIG_CMD_SWITCHOVER_START (command 11), unknown to QEMU {dv} "
                         f"(7.2 fails with 'MIG_CMD 0xb unknown (len 0x0)')")
            elif s != d:
                note = "a 10.0+ destination handles SWITCHOVER_START whatever its own setting"
        elif knob == "multifd-flush-after-each-section" and s != d:
            if multifd:
                fatal = "both ends must agree where multifd syncs happen (migration/multifd.c)"
            else:
                note = "no effect without the multifd capability"
        elif knob == "x-preempt-pre-7-2" and s != d:
            if "postcopy-preempt" in caps:
                fatal = "the postcopy preempt channel is set up at different times on the two ends"
            else:
                note = "no effect without the postcopy-preempt capability"
        elif knob == "zero-page-detection":
            if multifd and s == "multifd" and not dst.migration_properties[knob]["exists"]:
                fatal = (f"the source puts zero pages in multifd packets, which QEMU {dv} (before 9.0) "
                         f"does not read")
            elif s != d:
                note = "only the source's setting decides where zero pages travel; a 9.0+ destination reads both"
        elif knob == "multifd-clean-tls-termination":
            src_sends_bye = src.vt >= (10, 0)
            if multifd and tls and d == "on" and not src_sends_bye:
                fatal = (f"the destination requires a clean TLS termination of the multifd channels, which "
                         f"a QEMU {sv} source (before 10.0) does not send")
            elif s != d:
                note = "only the destination's setting matters (a 10.0+ source always ends TLS cleanly)"
        if fatal:
            reasons.append(f"{both}: {fatal}")
        elif note:
            warnings.append(f"{both}: {note}")

    # 5. other compat-governed properties that differ (device defaults; no device list is known
    # here, so these are warnings). A value the newer release sets through a list the older
    # release does not define is the compat promise itself (it reproduces the older release's
    # built-in default) and is not reported.
    se = _effective_with_origin(src, sm, [g for g in sg if g[0] != "migration"])
    de = _effective_with_origin(dst, dm, [g for g in dg if g[0] != "migration"])
    older, newer = (src, dst) if src.vt <= dst.vt else (dst, src)
    new_side = de if newer is dst else se
    for key in sorted(set(se) | set(de)):
        if key[0] == "migration":
            continue
        a, b = se.get(key, (None, None))[0], de.get(key, (None, None))[0]
        if a == b:
            continue
        origin = new_side.get(key, (None, None))[1]
        if older.vt != newer.vt and origin and origin.startswith(("hw_compat_", "pc_compat_")) \
                and origin not in older.compat_lists:
            continue
        warnings.append(f"{key[0]}.{key[1]}: {a if a is not None else '(device default)'} on the source ({sv}), "
                        f"{b if b is not None else '(device default)'} on the destination ({dv}); "
                        f"matters if the guest has that device")
    return Prediction(not reasons, reasons, warnings)
