"""What the destination a stream is judged for knows, from what the user gives: its
section tables and the MIG_CMD ids it decodes."""

from __future__ import annotations

import json

from wireformat.budgets import BUDGETS
from wireformat.commands import RELEASED, CommandSet

from conformance.check.inputs import InputError, open_stream


def destination_tables(dump_path: str | None, reference: str | None, target: str | None = None,
                       builtin: bool = True):
    """The destination's tables: what every destination of the target version has (shipped
    with migconform, unless `builtin` is off), refined by its own -dump-vmstate and/or a
    stream it saved itself -- these override what they describe (VMSD list, versions,
    declarations; the entries and RAM blocks it registers) and the built-in rules they cannot
    express (value rules, instance ids, RAM block rules, sections outside -dump-vmstate) stay.
    InputError (one line) for a dump or reference that cannot be read."""
    from conformance.rules.tables import DestinationTables, builtin_tables, refined_tables

    if not dump_path and not reference:
        if not builtin or target is None:
            return None
        return builtin_tables(target)
    from wireformat import vmstate

    dump = dump_json = None
    if dump_path:
        try:  # within the JSON budget: a FIFO or /dev/zero is not read without end
            with open(dump_path, "rb") as f:
                text = f.read(BUDGETS.json_bytes + 1)
        except OSError as e:
            raise InputError(f"{dump_path}: {e.strerror or e}") from None
        if len(text) > BUDGETS.json_bytes:
            raise InputError(f"{dump_path}: more than {BUDGETS.json_bytes} bytes, not a -dump-vmstate JSON")
        try:
            dump = vmstate.parse_dump_vmstate(text)
            dump_json = json.loads(text)  # parsed within the budget above: the declarations
        except ValueError as e:
            raise InputError(f"{dump_path}: not a -dump-vmstate JSON: {str(e).splitlines()[0]}") from None
    own = None
    if reference:
        src, _ = open_stream(reference)
        with src:
            own = DestinationTables.from_reference_stream(src, dump)
    if builtin and target is not None:
        refined = refined_tables(target, dump, dump_json, own)
        if refined is not None:
            return refined
    return own if own is not None else DestinationTables(dump=dump)


def command_set(send_src_downtime_id: int | None = None) -> CommandSet:
    """The released MIG_CMDs, or with the proposed SEND_SRC_DOWNTIME decoded under that id."""
    if send_src_downtime_id is not None:
        return CommandSet.with_send_src_downtime(send_src_downtime_id)
    return RELEASED


def stream_machine(path: str, limit: int = 4) -> str | None:
    """The machine type a stream file's configuration record names (None: none in its first
    records, or not a regular file)."""
    import os

    from wireformat.errors import DecodeError
    from wireformat.reader import StreamReader
    from wireformat.records import Configuration

    if not os.path.isfile(path):
        return None
    src, _ = open_stream(path)
    with src:
        try:
            for i, rec in enumerate(StreamReader(src)):
                if isinstance(rec, Configuration):
                    return rec.machine_type
                if i >= limit:
                    break
        except DecodeError:
            pass
    return None
