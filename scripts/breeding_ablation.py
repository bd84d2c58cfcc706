"""Breeding vs. no breeding on held-out photos, over several seeds (the paper's Table 1 rows).

For every seed it trains the config twice with the same budget — as configured (breeding)
and with ``--breeding.rounds 0`` (synthetic only) — tests both last checkpoints on the
held-out photos, and prints one JSON object: per-run metrics, mean ± std over seeds, and
on how many seeds breeding won each metric. Runs go to ``ROOT/<variant>_s<seed>/``; a run
whose ``test_metrics.json`` exists is not repeated, so an interrupted ablation resumes.

    python scripts/split_faces.py ../shared/data/faces /tmp/faces_split
    python scripts/breeding_ablation.py --train /tmp/faces_split/train \\
        --heldout /tmp/faces_split/heldout --seeds 0 1 2 --parallel 1
    # extra arguments go to every `ifn fit` / `ifn test`, e.g. --data.render.backend torch

Each run is one breeding fit and one test (the README gives their times); on a GPU
several runs fit side by side (``--parallel``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

METRICS = ("test/real_photometric_error", "test/real_iou", "test/geometric_error_mm")
#: For each metric, True when higher is better.
HIGHER_IS_BETTER = {"test/real_photometric_error": False, "test/real_iou": True, "test/geometric_error_mm": False}
VARIANTS = {"breeding": [], "none": ["--breeding.rounds", "0"]}


def _ifn(*args: str) -> list[str]:
    return [sys.executable, "-m", "ifn.cli", *args]


def run_variant(variant: str, seed: int, args: argparse.Namespace, extra: list[str]) -> dict[str, float]:
    """Fit and test one (variant, seed); returns its ``test_metrics.json``."""
    root = args.root / f"{variant}_s{seed}"
    result = root / "test_metrics.json"
    if result.is_file():
        return json.loads(result.read_text())
    common = [
        *(a for config in args.config for a in ("--config", str(config))),
        "--trainer.default_root_dir", str(root),
        "--seed_everything", str(seed),
        "--data.seed", str(seed),
        "--breeding.seed", str(seed),
        "--trainer.enable_progress_bar", "false",
        *extra,
        *VARIANTS[variant],  # last, so that it wins over any --breeding.rounds in extra
    ]  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "ablation.log", "w") as log:
        for command in (
            _ifn("fit", *common, "--data.photos.train_dir", str(args.train)),
            _ifn("test", *common, "--ckpt_path", str(root / "checkpoints" / "last.ckpt"),
                 "--data.photos.test_dir", str(args.heldout)),
        ):  # fmt: skip
            log.write("$ " + " ".join(command) + "\n")
            log.flush()
            if subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False).returncode != 0:
                raise RuntimeError(f"{variant} seed {seed} failed; see {root / 'ablation.log'}")
    written = sorted(root.glob("**/test_metrics.json"), key=lambda p: p.stat().st_mtime)
    if not written:
        raise RuntimeError(f"{variant} seed {seed}: no test_metrics.json under {root}")
    metrics = json.loads(written[-1].read_text())
    result.write_text(json.dumps(metrics, indent=1))
    return metrics


def summarise(runs: dict[str, dict[int, dict[str, float]]]) -> dict:
    """Mean ± std over seeds per variant, and paired wins of breeding over none."""
    summary: dict = {"runs": {f"{v}_s{s}": {m: runs[v][s][m] for m in METRICS} for v in runs for s in runs[v]}}
    for variant, by_seed in runs.items():
        summary[variant] = {}
        for metric in METRICS:
            values = [by_seed[s][metric] for s in sorted(by_seed)]
            summary[variant][metric] = {
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            }
    seeds = sorted(set(runs["breeding"]) & set(runs["none"]))
    summary["breeding_wins"] = {
        metric: sum(
            (runs["breeding"][s][metric] > runs["none"][s][metric]) == HIGHER_IS_BETTER[metric]
            and runs["breeding"][s][metric] != runs["none"][s][metric]
            for s in seeds
        )
        for metric in METRICS
    }
    summary["seeds"] = seeds
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=Path, required=True, help="photos to breed from (data.photos.train_dir)")
    parser.add_argument("--heldout", type=Path, required=True, help="photos to test on (data.photos.test_dir)")
    parser.add_argument(
        "--config", type=Path, nargs="+",
        default=[Path("configs/quickstart.yaml"), Path("configs/quickstart_breeding.yaml")],
        help="config files, applied in order (default: the quickstart and its breeding overlay)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--root", type=Path, default=Path("runs/breeding_ablation"))
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time")
    args, extra = parser.parse_known_args()
    for folder in (args.train, args.heldout):
        if not folder.is_dir():
            parser.error(f"folder not found: {folder}")
    jobs = [(variant, seed) for seed in args.seeds for variant in VARIANTS]
    runs: dict[str, dict[int, dict[str, float]]] = {variant: {} for variant in VARIANTS}
    with ThreadPoolExecutor(max(1, args.parallel)) as pool:
        futures = {job: pool.submit(run_variant, *job, args, extra) for job in jobs}
        for (variant, seed), future in futures.items():
            runs[variant][seed] = future.result()
            print(f"[ablation] {variant} seed {seed}: "
                  + ", ".join(f"{m} {runs[variant][seed][m]:.3f}" for m in METRICS), file=sys.stderr)  # fmt: skip
    print(json.dumps(summarise(runs), indent=1))


if __name__ == "__main__":
    main()
