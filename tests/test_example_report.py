"""The committed example report (docs/example-report/) cannot fall behind the code: the report that
`ftscale report` writes now, from the example's own committed rows (results.json), must have the
committed report's sections, tables and figures. A change to the report's shape fails here until the
example is made again (its README gives the command)."""

from __future__ import annotations

import json
import re

from ftscale.eval.sweep_report import rows_from_json, write_sweep_report
from ftscale.eval.tasks import get_task

from conftest import ROOT

EXAMPLE = ROOT / "docs" / "example-report"


def _shape(md: str) -> list[str]:
    """What a reader navigates by: the headings, each table's header and first column, the figures."""
    lines = md.splitlines()
    shape = []
    for i, line in enumerate(lines):
        if line.startswith("#"):
            shape.append(line)
        elif line.startswith("!["):
            shape.append(re.sub(r"\]\(.*\)", "]", line))
        elif line.startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            shape.append("table: " + line)
        elif line.startswith("| ") and not line.startswith("|---") and i > 0 and lines[i - 1].startswith("|"):
            shape.append("  row: " + line.split(" | ")[0])
    return shape


def test_the_example_report_is_what_ftscale_report_writes_now(tmp_path):
    data = json.loads((EXAMPLE / "results.json").read_text())
    rows = rows_from_json(data)
    assert len(rows) >= 6 and {r.backend for r in rows} >= {"hf", "vllm"}  # cross-backend, as it says
    _, md = write_sweep_report(tmp_path, rows, get_task(data["task"]), data["cost"], data["sources"])
    now, committed = _shape(md.read_text()), _shape((EXAMPLE / "report.md").read_text())
    assert now == committed, "\n".join(
        ["docs/example-report/ no longer matches what `ftscale report` writes; make it again "
         "(docs/example-report/README.md). First difference:"]
        + [f"  now: {a!r}\n  committed: {b!r}" for a, b in zip(now, committed) if a != b][:1]
        + [f"  {len(now)} lines now, {len(committed)} committed"])
    for name in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (EXAMPLE / "report.md").read_text()):
        assert (EXAMPLE / name).read_bytes()[:4] == b"\x89PNG", name  # every figure it links is committed
    # the rows re-read are the rows written: the same data again
    again = json.loads((tmp_path / "results.json").read_text())
    assert again["rows"] == data["rows"] and again["cost"] == data["cost"]

