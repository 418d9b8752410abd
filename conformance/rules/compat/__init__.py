"""QEMU version x machine-type compatibility: per-release data (machine types, hw_compat /
pc_compat property lists, migration knob defaults, capability rules) and the model that
predicts whether a migration between two releases can work. See `model`."""

from conformance.rules.compat.model import (  # noqa: F401
    WIRE_PROPERTIES,
    Capabilities,
    CompatEntry,
    MachineType,
    Prediction,
    UnknownMachine,
    UnknownVersion,
    VersionData,
    capabilities,
    capability_errors,
    effective_properties,
    load,
    machine_types,
    parse_globals,
    predict,
    resolve_machine,
    versions,
    wire_properties,
)
