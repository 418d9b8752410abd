"""One QEMU process asked one migrate-set-capabilities / migrate-set-parameters sequence
after another (capdiff's real side), always from its start-up state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from conformance.qemu.binaries import QemuBinary, QemuError
from conformance.qemu.process import QemuProcess, QmpCommandError

CAPS_COMMAND = "migrate-set-capabilities"
PARAMS_COMMAND = "migrate-set-parameters"


@dataclass(frozen=True)
class HostFacts:
    """What the host and the build offer, as a QEMU answers: checks of some capabilities
    depend on them (migration/options.c in 10.0, migration/migration.c in 7.2)."""

    kvm_dirty_ring: bool
    uffd_write_protect: bool
    replication: bool
    compression_methods: frozenset[str]


class CapSession:
    """One QEMU process answering sequences of QMP commands one after the other: before
    each, capabilities and the `parameters` named are put back to their start-up values (and
    checked); if that is refused or does not stick, or the process died, it is restarted."""

    def __init__(self, binary: QemuBinary, machine: str = "pc-i440fx-7.2", *, parameters: Iterable[str] = (),
                 name: str | None = None):
        self.binary = binary
        self.version = binary.version
        self.machine = machine
        self.parameters = tuple(parameters)
        self.name = name or f"capdiff-{binary.version}"
        self.q: QemuProcess | None = None
        self.names: list[str] = []  # the capabilities this QEMU offers
        self.initial_caps: dict[str, bool] = {}
        self.initial_params: dict[str, Any] = {}
        self.host: HostFacts | None = None  # probed once, at the first start
        self.restarts = 0
        self._dirty = False

    # lifecycle
    def __enter__(self) -> "CapSession":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        self.close()
        q = QemuProcess(self.binary, ["-machine", self.machine], name=self.name, cmd_timeout=10.0)
        q.start()
        self.q = q
        self.initial_caps = {c["capability"]: bool(c["state"]) for c in q.cmd("query-migrate-capabilities")}
        self.names = list(self.initial_caps)
        params = q.cmd("query-migrate-parameters")
        self.initial_params = {k: params[k] for k in self.parameters if k in params}
        if self.host is None:
            self.host = self._probe_host()
        self._dirty = False

    def close(self) -> None:
        if self.q is not None:
            self.q.terminate()
            self.q = None

    def restart(self) -> None:
        self.restarts += 1
        self.start()

    # the host
    def _probe_host(self) -> HostFacts:
        """Host/build facts, asked of this QEMU with single capabilities whose only check is the
        environment one (then put back), query-kvm and the QMP schema."""
        q = self.q
        assert q is not None
        kvm = bool(q.cmd("query-kvm").get("enabled"))
        dirty_ring = False
        if kvm:
            try:
                dirty_ring = int(q.cmd("qom-get", path="/machine/accel", property="dirty-ring-size")) > 0
            except QmpCommandError:
                dirty_ring = False

        def accepted(cap: str, refusal: str) -> bool:
            if cap not in self.names:
                return True
            try:
                self._set_caps({cap: True})
            except QmpCommandError as e:
                if refusal not in e.desc:
                    raise
                return False
            self._set_caps({cap: False})
            return True

        uffd = accepted("background-snapshot", "not supported by host kernel")
        replication = accepted("x-colo", "without replication")
        return HostFacts(kvm_dirty_ring=dirty_ring, uffd_write_protect=uffd, replication=replication,
                         compression_methods=frozenset(self._compression_methods()))

    def _compression_methods(self) -> set[str]:
        assert self.q is not None
        schema = self.q.cmd("query-qmp-schema")
        by_name = {e["name"]: e for e in schema}
        cmd = next((e for e in schema if e.get("meta-type") == "command" and e["name"] == PARAMS_COMMAND), None)
        if cmd is None:
            return set()
        stack = [by_name[cmd["arg-type"]]]
        while stack:
            obj = stack.pop()
            for m in obj.get("members", []):
                if m["name"] == "multifd-compression":
                    return {v["name"] if isinstance(v, dict) else v
                            for v in by_name[m["type"]].get("members", by_name[m["type"]].get("values", []))}
            for b in obj.get("base", []) if isinstance(obj.get("base"), list) else []:
                stack.append(by_name[b])
        return set()

    # commands
    def _set_caps(self, caps: Mapping[str, bool]) -> None:
        assert self.q is not None
        self.q.cmd(CAPS_COMMAND, capabilities=[{"capability": k, "state": v} for k, v in caps.items()])

    def reset(self) -> None:
        """Back to the start-up state (restarting QEMU when it cannot be put back)."""
        if self.q is None or not self.q.alive():
            self.restart()
            return
        if not self._dirty:
            return
        try:
            self._set_caps(self.initial_caps)
            self.q.cmd(PARAMS_COMMAND, dict(self.initial_params))
            now = {c["capability"]: bool(c["state"]) for c in self.q.cmd("query-migrate-capabilities")}
            params = self.q.cmd("query-migrate-parameters")
            ok = now == self.initial_caps and all(params.get(k) == v for k, v in self.initial_params.items())
        except QemuError:
            ok = False
        if not ok:
            self.restart()
        self._dirty = False

    def apply(self, steps: Sequence[tuple[str, Mapping[str, Any]]]) -> list[tuple[str, str | None]]:
        """QEMU's answer to each (command, arguments), from the start-up state: (command, None)
        when accepted, else (command, QEMU's error desc). A process that dies or hangs ends the
        sequence with "QEMU failed: ..." and is started afresh next time."""
        self.reset()
        assert self.q is not None
        out: list[tuple[str, str | None]] = []
        for command, args in steps:
            self._dirty = True
            try:
                self.q.cmd(command, args)
                out.append((command, None))
            except QmpCommandError as e:
                out.append((command, e.desc))
            except QemuError as e:
                out.append((command, f"QEMU failed: {e}"))
                self.close()
                break
        return out
