"""`migconform matrix`: real migrations over a version x machine-type grid, compared with
what the compatibility model (`conformance.rules.compat.predict`) and the stream checker
(`check`'s own judge, `conformance.check.judge.judge_path`, for the destination) say about
each of them.

A *cell* is one direction: a source QEMU version, a destination version, a machine type, a
device set and a capability set. The source (stopped, `-S`) migrates into a file
(`capture_stream`, fd: transport); the destination is started with the same command line and
capabilities and loads that file (`start_destination` + `feed`, the two steps of `load_stream`,
so that a destination that cannot start is told from one that fails to load). One capture
serves every destination of the same source/machine/devices/capabilities. A cell *agrees*
when the real outcome (completed or not) is what the model predicted and what the checker's
verdict for that destination says; a disagreement is a finding, explained from the stream at
the place the destination failed (its error lines matched with the section in the stream, the
destination's own stream of the same guest, the checker's violations and the section's
decoded fields).

Rooms: `grid` (the dimensions, no QEMU), `store` (captures shared by threads and processes),
`cell` (one cell: outcome, checker verdict, prediction), `explain` (why a cell went as it
did), `run` (the pool of threads), `report` (terminal, progress bar, HTML; from the JSON
form), `command` (argparse). Pure orchestration: processes are started by `conformance.qemu`.
"""

from conformance.tools.matrix.cell import (
    CellResult,
    CheckerVerdict,
    Outcome,
    check_capture,
    load_into,
    outcome_of_exception,
    outcome_of_verdict,
    predict_cell,
    run_cell,
)
from conformance.tools.matrix.command import add_matrix_parser, cmd_matrix
from conformance.tools.matrix.explain import explain_cell, failing_section
from conformance.tools.matrix.grid import (
    CAPABILITY_SETS,
    DEFAULT_CAPS,
    DEFAULT_DEVICES,
    DEFAULT_VERSIONS,
    DEFAULT_MACHINES,
    EXCLUDED_CAPABILITIES,
    MATRIX_DEVICE_SETS,
    CellSpec,
    Grid,
    MatrixError,
    build_grid,
    default_machines,
    parse_caps,
)
from conformance.tools.matrix.run import MatrixResult, run_matrix
from conformance.tools.matrix.store import Capture, CaptureStore

__all__ = [
    "CAPABILITY_SETS", "EXCLUDED_CAPABILITIES", "MATRIX_DEVICE_SETS", "DEFAULT_MACHINES", "DEFAULT_DEVICES", "DEFAULT_VERSIONS",
    "DEFAULT_CAPS", "CellSpec", "Grid", "Outcome", "CellResult", "MatrixResult", "CaptureStore", "Capture",
    "CheckerVerdict", "MatrixError", "parse_caps", "default_machines", "build_grid", "predict_cell", "check_capture",
    "load_into", "outcome_of_verdict", "outcome_of_exception", "failing_section", "explain_cell", "run_cell",
    "run_matrix", "add_matrix_parser", "cmd_matrix",
]
