"""docs/node.md's parameter table and config/perception.yaml against the node's parameter table
(node_params.PARAMETERS): every parameter documented and in the shipped params file, with the
same default, and '(ro)' exactly on the read-only ones."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("rclpy", reason="rclpy not installed")

from mtl_perception.node_params import PARAMETERS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _doc_rows() -> dict[str, tuple[str, bool]]:
    """name -> (default as written, marked ro) from the '## Parameters' table."""
    text = (ROOT / "docs/node.md").read_text()
    table = text.split("## Parameters", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, tuple[str, bool]] = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not cells[0].startswith("`"):
            continue
        names = re.findall(r"`([a-z0-9_]+)`", cells[0])
        defaults = re.findall(r"`([^`]*)`", cells[1])
        ro = "(ro" in cells[0]
        for i, name in enumerate(names):
            rows[name] = (defaults[i] if len(defaults) == len(names) else "?", ro)
    return rows


def _as_doc(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return '""' if value == "" else str(value)


def test_every_parameter_is_in_the_docs_table_with_its_default_and_ro() -> None:
    rows = _doc_rows()
    assert set(PARAMETERS) <= set(rows), f"undocumented in docs/node.md: {set(PARAMETERS) - set(rows)}"
    for name, (default, desc) in PARAMETERS.items():
        assert rows[name] == (_as_doc(default), desc.read_only), name
    # no stale rows: a renamed or removed parameter leaves none behind (the two the model sets are
    # declared by the node itself, not in the table)
    assert set(rows) - set(PARAMETERS) == {"class_names", "class_palette"}


def test_params_file_lists_every_parameter_at_its_default() -> None:
    data = yaml.safe_load((ROOT / "config/perception.yaml").read_text())
    values = data["/**"]["ros__parameters"]
    assert set(values) == set(PARAMETERS)
    assert {k: v for k, v in values.items() if v != PARAMETERS[k][0]} == {}
