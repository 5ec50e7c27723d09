"""The provenance of a benchmark result, kept beside it in one JSON record.

A figure in the README means little without how it was made: the command as run, the commit (and whether the tree
had uncommitted changes), the package versions, the torch threads, the CPU and the machine's load average (the
benchmarks run on shared cores, where other jobs slow wall-clock times). ``write_record`` writes a result with all
of these, so that every figure can be backed by a file in ``benchmarks/results/``::

    python benchmarks/episodes.py --record benchmarks/results/episodes_cpu.json

The provenance itself is ``hf_metatransfer.provenance`` (the recipes' ``results.json`` carry it too). The scripts
import this module as ``from record import write_record``: a script run as ``python benchmarks/X.py`` has its
folder on ``sys.path``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hf_metatransfer.provenance import with_provenance


def write_record(path: str | Path, result: dict[str, Any]) -> Path:
    """Write ``result`` with its provenance to ``path`` as indented JSON (parent folders made); the path.

    A result key that provenance also sets must hold the same value (a benchmark may report its threads): a
    different one raises ``ValueError`` rather than being overwritten.
    """
    record = with_provenance(result)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(record, indent=1) + "\n")
    return target
