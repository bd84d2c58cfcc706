"""scripts/breeding_ablation.py: paired summary over seeds, and a tiny end-to-end run (slow)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "breeding_ablation.py"



def _metrics(photometric: float, iou: float, geometric: float) -> dict[str, float]:
    return {"test/real_photometric_error": photometric, "test/real_iou": iou, "test/geometric_error_mm": geometric}


def test_summary_counts_paired_wins_in_the_right_direction(load_script):
    ablation = load_script("breeding_ablation")
    runs = {
        "breeding": {0: _metrics(50.0, 90.0, 4.0), 1: _metrics(52.0, 89.0, 3.0), 2: _metrics(51.0, 89.5, 3.5)},
        "none": {0: _metrics(51.0, 89.0, 3.0), 1: _metrics(53.0, 89.5, 3.0), 2: _metrics(50.0, 89.0, 3.6)},
    }
    summary = ablation.summarise(runs)
    # lower photometric wins on seeds 0, 1; higher IoU on 0, 2; lower geometric on 2 (a tie is no win)
    assert summary["breeding_wins"] == {
        "test/real_photometric_error": 2,
        "test/real_iou": 2,
        "test/geometric_error_mm": 1,
    }
    assert summary["breeding"]["test/real_photometric_error"]["mean"] == pytest.approx(51.0)
    assert summary["none"]["test/real_iou"]["std"] == pytest.approx(0.288675, abs=1e-6)  # stdev(89, 89.5, 89)
    assert summary["seeds"] == [0, 1, 2]
    assert summary["runs"]["none_s2"]["test/real_iou"] == 89.0


@pytest.mark.slow
def test_tiny_ablation_end_to_end(tmp_path, run, annotated_photos, tiny_breeding_run):
    photos, tiny = annotated_photos, tiny_breeding_run
    command = [sys.executable, str(SCRIPT), "--train", str(photos), "--heldout", str(photos), "--seeds", "0",
               "--root", str(tmp_path / "runs"), *tiny]  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    result = run(command, cwd=REPO, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads(result.stdout)
    for variant in ("breeding", "none"):
        metrics = summary["runs"][f"{variant}_s0"]
        assert 0 < metrics["test/real_photometric_error"] < 255
        assert 0 <= metrics["test/real_iou"] <= 100
    log = (tmp_path / "runs" / "breeding_s0" / "ablation.log").read_text()
    assert "breeding round 2/2" in log and "after the lighting fit" in log  # the quickstart config re-fits light
    assert "breeding round" not in (tmp_path / "runs" / "none_s0" / "ablation.log").read_text()
    # A finished run is not repeated: a second call reads the results back at once.
    again = run(command, cwd=REPO, env=env, timeout=120)
    assert again.returncode == 0 and json.loads(again.stdout)["runs"] == summary["runs"]
