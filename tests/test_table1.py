"""scripts/table1.py: mean ± std over seeds and the Markdown table by value, and a tiny
end-to-end run of every row (slow)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "table1.py"



def test_summary_and_markdown_by_value(load_script):
    table1 = load_script("table1")
    runs = {
        "euclidean": {0: {"test/geometric_error_mm": 4.0, "fit_minutes": 1.0},
                      1: {"test/geometric_error_mm": 5.0, "fit_minutes": 3.0}},
        "model_space": {0: {"test/geometric_error_mm": 3.0, "test/iou": 90.0, "fit_minutes": 2.0}},
    }
    summary = table1.summarise(runs)
    assert summary["euclidean"]["test/geometric_error_mm"] == {"mean": 4.5, "std": pytest.approx(0.7071068), "n": 2}
    assert summary["model_space"]["test/iou"] == {"mean": 90.0, "std": 0.0, "n": 1}
    assert "test/iou" not in summary["euclidean"]  # never measured: no entry, not a 0
    lines = table1.markdown(summary).splitlines()
    assert lines[0].startswith("| row | geometric (mm) | photometric | IoU % | rel. rotation")
    assert lines[2].startswith("| Euclidean parameter loss | 4.500 ± 0.707 | — | — |")
    assert lines[2].endswith("| 2.0 ± 1.4 |")
    assert lines[3].startswith("| + model-space loss | 3.000 ± 0.000 | — | 90.00 ± 0.00 |")
    # The paper's rows follow, for the rows that were run.
    assert lines[4].startswith("| paper: Euclidean parameter loss | 2.910 | 46.26 | 90.44 |")
    assert len(lines) == 6


def test_rows_turn_breeding_off_except_the_breeding_row(load_script):
    table1 = load_script("table1")
    rows = table1.rows("resnet50")
    assert "--breeding.rounds" not in rows["model_space_breeding"]
    for name in ("euclidean", "model_space", "deep"):
        assert rows[name][-2:] == ["--breeding.rounds", "0"], name
    assert "--model.euclidean_loss" in rows["euclidean"] and "resnet50" in rows["deep"]
    assert "deep" not in table1.rows(None)
    # The model-space rows are the paper's σ² weighting within a group unless told otherwise.
    for name in ("model_space", "model_space_breeding", "deep"):
        at = rows[name].index("--model.mode_exponent")
        assert rows[name][at + 1] == "1", name
        assert table1.rows("resnet50", 0.0)[name][at + 1] == "0", name
    assert "--model.mode_exponent" not in rows["euclidean"]


@pytest.mark.slow
def test_tiny_table_end_to_end(tmp_path, run, annotated_photos, tiny_breeding_run):
    photos, tiny = annotated_photos, tiny_breeding_run
    command = [sys.executable, str(SCRIPT), "--train", str(photos), "--heldout", str(photos), "--seeds", "0",
               "--root", str(tmp_path / "runs"), *tiny]  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    result = run(command, cwd=REPO, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    table = result.stdout.strip().splitlines()
    assert [line.split(" | ")[0] for line in table[2:5]] == [
        "| Euclidean parameter loss", "| + model-space loss", "| + breeding"]
    saved = json.loads((tmp_path / "runs" / "table1.json").read_text())
    for row in ("euclidean", "model_space", "model_space_breeding"):
        metrics = saved["runs"][row]["0"]
        assert 0 < metrics["test/real_photometric_error"] < 255 and metrics["fit_minutes"] > 0
    assert "breeding round 2/2" in (tmp_path / "runs" / "model_space_breeding_s0" / "table1.log").read_text()
    assert "breeding round" not in (tmp_path / "runs" / "model_space_s0" / "table1.log").read_text()
