"""test_metrics.json and the per-image CSV are written whatever the photos' file names are."""

from __future__ import annotations

import csv
import io
import json
import os
import urllib.parse
from types import SimpleNamespace

import torch

from ifn.callbacks.test_metrics import PER_IMAGE_COLUMNS, TestMetricsWriter


def _trainer(log_dir):
    return SimpleNamespace(
        callback_metrics={"test/iou": torch.tensor(50.0), "test/real_iou": torch.tensor(40.0), "val/x": 1.0},
        log_dir=str(log_dir), default_root_dir=str(log_dir), is_global_zero=True, world_size=1,
    )


def _module(rows):
    return SimpleNamespace(evaluators={"test": SimpleNamespace(real_rows=rows)})


def test_names_that_are_not_utf8_keep_their_rows(tmp_path):
    latin1 = os.fsencode(tmp_path) + b"/photos/caf\xe9.jpg"
    percent = os.fsencode(tmp_path) + b"/photos/100%.jpg"
    rows = [
        {"path": os.fsdecode(latin1), "face_index": 0, "photometric_error": 12.5, "iou": 80.0},
        {"path": os.fsdecode(percent), "face_index": 1, "photometric_error": 20.0, "iou": 70.0},
        {"path": str(tmp_path / "photos" / "plain.jpg"), "face_index": 0, "photometric_error": 1.0, "iou": 99.0},
    ]
    writer = TestMetricsWriter()
    writer.on_test_end(_trainer(tmp_path), _module(rows))
    assert json.loads((tmp_path / "test_metrics.json").read_text()) == {"test/iou": 50.0, "test/real_iou": 40.0}
    text = (tmp_path / "test_real_per_image.csv").read_bytes().decode("utf-8")  # strict UTF-8
    table = list(csv.DictReader(io.StringIO(text)))
    assert list(table[0]) == PER_IMAGE_COLUMNS
    recovered = {(urllib.parse.unquote_to_bytes(r["path"]), int(r["face_index"])): float(r["iou"]) for r in table}
    assert recovered == {
        (latin1, 0): 80.0,
        (percent, 1): 70.0,
        (os.fsencode(tmp_path / "photos" / "plain.jpg"), 0): 99.0,
    }
    assert {r["path"].rsplit("/", 1)[1] for r in table} == {"caf%E9.jpg", "100%25.jpg", "plain.jpg"}
