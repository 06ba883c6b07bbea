"""docs/ros_interface.md's parameter tables are what the nodes declare: generated from the parameter
dataclasses by find_ros.param_docs, and the committed document equals a fresh generation."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from find_ros import param_docs
from find_ros.params import parameter_rows

REPO = Path(__file__).resolve().parents[1]


def test_committed_tables_equal_the_generated_ones():
    text = param_docs.DOC.read_text(encoding="utf-8")
    assert param_docs.render(text) == text, f"docs/ros_interface.md is out of date: run {param_docs.COMMAND}"


def test_each_node_section_lists_every_parameter_with_its_default():
    text = param_docs.DOC.read_text(encoding="utf-8")
    for node, cls in param_docs.node_classes().items():
        block = param_docs._block(node).search(text)
        assert block, node
        rows = [line for line in block.group(2).splitlines() if line.startswith("| `")]
        assert len(rows) == len(parameter_rows(cls)), node
        for (name, kind, default, _, _), row in zip(parameter_rows(cls), rows):
            assert row.startswith(f"| `{name}` | {kind} | `{param_docs.show_default(default)}` |"), row


def test_a_stale_or_edited_table_is_rewritten_and_reported(tmp_path):
    text = param_docs.DOC.read_text(encoding="utf-8")
    stale = text.replace("| `buffer_size` | int | `30` |", "| `buffer_size` | int | `31` |")
    assert stale != text and param_docs.render(stale) == text
    doc = tmp_path / "ros_interface.md"
    doc.write_text(stale, encoding="utf-8")
    check = subprocess.run([sys.executable, "-m", "find_ros.param_docs", "--check", "--doc", str(doc)], cwd=REPO,
                           capture_output=True, text=True)
    assert check.returncode == 1 and "out of date" in check.stderr
    assert subprocess.run([sys.executable, "-m", "find_ros.param_docs", "--doc", str(doc)], cwd=REPO).returncode == 0
    assert doc.read_text(encoding="utf-8") == text


def test_a_missing_marker_is_an_error_naming_it():
    text = param_docs.DOC.read_text(encoding="utf-8").replace("<!-- end parameters: find_replay -->", "")
    with pytest.raises(ValueError, match="end parameters: find_replay"):
        param_docs.render(text)


@pytest.mark.parametrize("value, shown", [(True, "true"), (False, "false"), ("", '""'), (["a", "b"], "[a, b]"),
                                          (0.05, "0.05"), (640, "640")])
def test_defaults_are_shown_as_a_params_file_spells_them(value, shown):
    assert param_docs.show_default(value) == shown
