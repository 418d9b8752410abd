"""The QEMU versions migconform models, and what each one does differently: one registry.

One row per modelled version, keyword-only. Every other list of versions (destination
profiles, MigrationStatus tables, the pytest fixtures, the matrix's default grid, the
targets of generated streams and mutations, `check --target`) is derived from `VERSIONS`,
and every ordering of version strings uses `version_key`. Modelling another version is a
row here plus its data files (rules/compat/data/qemu-X.Y.json, and, to judge section
versions, rules/data/vmsd-versions-X.Y.json), each fact checked on a real binary:
tests/test_versions.py fails when a list elsewhere does not follow.

Pure data: nothing here imports the rest of migconform.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class Modelled:
    version: str  # the release, "10.0"

    # What a destination accepts (rules/profile.py; spec validation.md).
    mig_cmd_max: int  # first MIG_CMD id the destination does not know (SWITCHOVER_START is 11, 10.0+)
    multifd_flush_understood: bool  # RAM_SAVE_FLAG_MULTIFD_FLUSH (8.0+)
    zero_fill_must_be_zero: bool  # a ZERO page whose fill byte is not 0 fails the load (8.2+)
    hook_fails: bool  # RAM_SAVE_FLAG_HOOK without RDMA fails the section (7.2); 10.0 ignores it
    compress_page_known: bool  # RAM_SAVE_FLAG_COMPRESS_PAGE exists (removed in 9.1)
    validated_capabilities: frozenset[str]  # the configuration record may carry these (others are refused)
    # Channels and the return path (rules/dest_channels.py, rules/settings.py).
    rp_msg_max: int  # first return-path message type the version does not know (SWITCHOVER_ACK is 7, 8.1+)
    multifd_zero_pages_understood: bool  # a multifd packet's zero-page list is applied (9.0+; 7.2 ignores it)
    colo_enable_needs_capability: bool  # MIG_CMD_ENABLE_COLO fails without x-colo (10.0); 7.2 turns COLO on and hangs

    # MigrationStatus (rules/migration_states.py; spec state-machine.md).
    switchover_device_state: bool  # the source passes `device` on every switchover, not only after pause-before-switchover
    recover_setup_state: bool  # a postcopy recovery passes `postcopy-recover-setup` on the source (9.1+)
    cancel_in_postcopy: bool  # migrate_cancel is taken once postcopy started (10.0 refuses it)
    incoming_setup_state: bool  # the destination is `setup` from migrate-incoming on (7.2 only announces it)

    # Faults of the binary itself, labelled where they show (the matrix), never hidden.
    tcg_dirty_tracking_loses_writes: bool  # a RUNNING guest under TCG can lose writes in a migration from it (fixed in 9.0)
    # multifd with postcopy-ram: 7.2 accepts the pair, and its destination aborts once postcopy
    # starts (util/yank.c assertion `QLIST_EMPTY(&entry->yankfns)`); 10.0 refuses the pair
    multifd_postcopy_destination_aborts: bool


MODELLED: tuple[Modelled, ...] = (
    Modelled(
        version="7.2",
        mig_cmd_max=11,
        multifd_flush_understood=False,
        zero_fill_must_be_zero=False,
        hook_fails=True,
        compress_page_known=True,
        validated_capabilities=frozenset({"x-ignore-shared"}),
        rp_msg_max=7,
        multifd_zero_pages_understood=False,
        colo_enable_needs_capability=False,
        switchover_device_state=False,
        recover_setup_state=False,
        cancel_in_postcopy=True,
        incoming_setup_state=False,
        tcg_dirty_tracking_loses_writes=True,
        multifd_postcopy_destination_aborts=True,
    ),
    Modelled(
        version="10.0",
        mig_cmd_max=12,
        multifd_flush_understood=True,
        zero_fill_must_be_zero=True,
        hook_fails=False,
        compress_page_known=False,
        validated_capabilities=frozenset({"x-ignore-shared", "mapped-ram"}),
        rp_msg_max=8,
        multifd_zero_pages_understood=True,
        colo_enable_needs_capability=True,
        switchover_device_state=True,
        recover_setup_state=True,
        cancel_in_postcopy=False,
        incoming_setup_state=True,
        tcg_dirty_tracking_loses_writes=False,
        multifd_postcopy_destination_aborts=False,
    ),
)


def version_key(version: str) -> tuple[int, ...]:
    """Sort key of a QEMU version or machine-type level: '9.2' < '10.0' < '10.0.2' (as numbers,
    not text). ValueError for a name that is not dotted numbers."""
    return tuple(int(x) for x in str(version).split("."))


def release(version: str) -> str:
    """'7.2.22' -> '7.2': the release a binary's full version belongs to."""
    return ".".join(str(version).split(".")[:2])


def _index(rows: tuple[Modelled, ...]) -> tuple[dict[str, Modelled], tuple[str, ...], str]:
    facts = {m.version: m for m in sorted(rows, key=lambda m: version_key(m.version))}
    if len(facts) != len(rows):
        raise ValueError("a version is modelled twice")
    names = tuple(facts)
    return facts, names, names[-1]


FACTS, VERSIONS, NEWEST = _index(MODELLED)  # by version; the versions oldest first; the newest


def facts(version: str) -> Modelled:
    """The row of a modelled version ('7.2.22' means 7.2); KeyError names the modelled ones."""
    key = release(version)
    if key not in FACTS:
        raise KeyError(f"QEMU {version} is not modelled (modelled: {', '.join(VERSIONS)})")
    return FACTS[key]
