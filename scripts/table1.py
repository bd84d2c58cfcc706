"""The paper's Table 1 at the scale of the machine: its rows on one budget and several seeds.

Rows (each trained and tested per seed, same config, same budget):

* ``euclidean``: the plain-L2 parameter loss (all weights and σ's 1), no breeding;
* ``model_space``: the model-space loss, no breeding;
* ``model_space_breeding``: the model-space loss with breeding on ``--train`` photos;
* ``deep`` (with ``--deep BACKBONE``): a deeper backbone with the model-space loss.

Every run is ``ifn fit`` then ``ifn test`` on the synthetic test set and the held-out photos;
it prints a Markdown table (mean ± std over seeds) with the synthetic geometric error,
photometric error, IoU and per-group relative errors, the real held-out photometric error
and IoU, and the training time, and writes the same as JSON. Runs go to
``ROOT/<row>_s<seed>/``; a run whose ``test_metrics.json`` exists is not repeated, so an
interrupted table resumes.

    ifn facemodel convert ict ../shared/data/ICT-FaceKit-master.zip -o models/ict.npz
    python scripts/split_faces.py ../shared/data/faces /tmp/faces_split
    python scripts/table1.py --face-model models/ict.npz --train /tmp/faces_split/train \\
        --heldout /tmp/faces_split/heldout --seeds 0 1 2
    # extra arguments go to every `ifn fit` / `ifn test`, e.g. --data.render.image_size 64
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

GROUPS = ("rotation", "shape", "expression", "reflectance", "illumination")
#: (column title, metric key, digits) of the printed table.
COLUMNS = (
    ("geometric (mm)", "test/geometric_error_mm", 3),
    ("photometric", "test/photometric_error", 2),
    ("IoU %", "test/iou", 2),
    *((f"rel. {g}", f"test/param_rel_rmse_{g}", 3) for g in GROUPS),
    ("real photometric", "test/real_photometric_error", 2),
    ("real IoU %", "test/real_iou", 2),
    ("training (min)", "fit_minutes", 1),
)
#: The paper's Table 1 (AlexNet, 240², 75K iterations, CelebA test images), for comparison.
PAPER = {
    "euclidean": {"test/photometric_error": 46.26, "test/geometric_error_mm": 2.91, "test/iou": 90.44},
    "model_space": {"test/photometric_error": 39.71, "test/geometric_error_mm": 2.77, "test/iou": 92.51},
    "model_space_breeding": {"test/photometric_error": 34.03, "test/geometric_error_mm": 2.11, "test/iou": 93.96},
    "deep": {"test/photometric_error": 41.23, "test/geometric_error_mm": 2.54, "test/iou": 92.07},
}
TITLES = {
    "euclidean": "Euclidean parameter loss",
    "model_space": "+ model-space loss",
    "model_space_breeding": "+ breeding",
    "deep": "deeper backbone + model-space loss",
}


def rows(deep: str | None, mode_exponent: float = 1.0) -> dict[str, list[str]]:
    """The rows' extra arguments (on top of the configs, which enable breeding).

    The model-space rows split each group's share among its modes by σ^(2·mode_exponent):
    1 by default, the paper's model-space weighting, which is what its Table 1 compares with
    the Euclidean loss (ifn's own default is 0, every mode of a group counting the same).
    """
    modes = ["--model.mode_exponent", f"{mode_exponent:g}"]
    table = {
        "euclidean": ["--model.euclidean_loss", "true", "--breeding.rounds", "0"],
        "model_space": [*modes, "--breeding.rounds", "0"],
        "model_space_breeding": modes,
    }
    if deep:
        table["deep"] = ["--model.backbone", deep, *modes, "--breeding.rounds", "0"]
    return table


def _ifn(*args: str) -> list[str]:
    return [sys.executable, "-m", "ifn.cli", *args]


def run(row: str, row_args: list[str], seed: int, args: argparse.Namespace, extra: list[str]) -> dict[str, float]:
    """Fit and test one (row, seed); returns its metrics with ``fit_minutes``."""
    root = args.root / f"{row}_s{seed}"
    result = root / "test_metrics.json"
    if result.is_file():
        return json.loads(result.read_text())
    common = [
        *(a for config in args.config for a in ("--config", str(config))),
        "--trainer.default_root_dir", str(root),
        "--seed_everything", str(seed), "--data.seed", str(seed), "--breeding.seed", str(seed),
        "--trainer.enable_progress_bar", "false",
        *(["--data.render.face_model", args.face_model] if args.face_model else []),
        *extra,
        *row_args,  # last: the row's settings win
    ]  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "table1.log", "w") as log:
        fit = _ifn("fit", *common, "--data.photos.train_dir", str(args.train))
        test = _ifn("test", *common, "--ckpt_path", str(root / "checkpoints" / "last.ckpt"),
                    "--data.photos.test_dir", str(args.heldout))  # fmt: skip
        minutes = 0.0
        for command in (fit, test):
            log.write("$ " + " ".join(command) + "\n")
            log.flush()
            start = time.perf_counter()
            if subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False).returncode != 0:
                raise RuntimeError(f"{row} seed {seed} failed; see {root / 'table1.log'}")
            if command is fit:
                minutes = (time.perf_counter() - start) / 60
    written = sorted(root.glob("**/test_metrics.json"), key=lambda p: p.stat().st_mtime)
    if not written:
        raise RuntimeError(f"{row} seed {seed}: no test_metrics.json under {root}")
    metrics = {**json.loads(written[-1].read_text()), "fit_minutes": minutes}
    result.write_text(json.dumps(metrics, indent=1))
    return metrics


def summarise(runs: dict[str, dict[int, dict[str, float]]]) -> dict[str, dict[str, dict[str, float]]]:
    """``{row: {metric: {"mean", "std", "n"}}}`` over seeds (std 0 for one seed)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for row, by_seed in runs.items():
        out[row] = {}
        for _, key, _ in COLUMNS:
            values = [by_seed[s][key] for s in sorted(by_seed) if by_seed[s].get(key) is not None]
            if values:
                out[row][key] = {
                    "mean": statistics.fmean(values),
                    "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "n": len(values),
                }
    return out


def markdown(summary: dict[str, dict[str, dict[str, float]]]) -> str:
    """The table: one line per row (mean ± std over seeds), then the paper's rows."""
    header = "| row | " + " | ".join(title for title, _, _ in COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 1)]
    for row, metrics in summary.items():
        cells = []
        for _, key, digits in COLUMNS:
            value = metrics.get(key)
            cells.append("—" if value is None else f"{value['mean']:.{digits}f} ± {value['std']:.{digits}f}")
        lines.append(f"| {TITLES.get(row, row)} | " + " | ".join(cells) + " |")
    for row, metrics in PAPER.items():
        if row in summary:
            cells = [f"{metrics[key]:.{digits}f}" if key in metrics else "" for _, key, digits in COLUMNS]
            lines.append(f"| paper: {TITLES[row]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=Path, required=True, help="photos to breed from (data.photos.train_dir)")
    parser.add_argument("--heldout", type=Path, required=True, help="photos to test on (data.photos.test_dir)")
    parser.add_argument("--face-model", default=None, help="face model for every row (default: the config's)")
    parser.add_argument(
        "--config", type=Path, nargs="+",
        default=[Path("configs/quickstart.yaml"), Path("configs/quickstart_breeding.yaml")],
        help="config files, applied in order (they must enable breeding; rows turn it off)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--deep", default=None, help="add a row with this deeper timm backbone, e.g. resnet50")
    parser.add_argument("--root", type=Path, default=Path("runs/table1"))
    parser.add_argument(
        "--mode-exponent", type=float, default=1.0,
        help="model.mode_exponent of the model-space rows (1: the paper's σ² weighting within a group)",
    )
    args, extra = parser.parse_known_args()
    for folder in (args.train, args.heldout):
        if not folder.is_dir():
            parser.error(f"folder not found: {folder}")
    runs: dict[str, dict[int, dict[str, float]]] = {}
    for row, row_args in rows(args.deep, args.mode_exponent).items():
        runs[row] = {}
        for seed in args.seeds:
            runs[row][seed] = run(row, row_args, seed, args, extra)
            print(f"[table1] {row} seed {seed}: geometric {runs[row][seed]['test/geometric_error_mm']:.3f} mm, "
                  f"{runs[row][seed]['fit_minutes']:.1f} min", file=sys.stderr)  # fmt: skip
    summary = summarise(runs)
    (args.root / "table1.json").write_text(json.dumps({"runs": runs, "summary": summary}, indent=1))
    print(markdown(summary))


if __name__ == "__main__":
    main()
