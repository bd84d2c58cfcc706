#!/usr/bin/env bash
# The main job on built-in defaults: set up .venv, train InverseFaceNet on the procedural
# face model (CPU, about 10 minutes on 2 cores), then test it. Extra arguments go to both
# `ifn fit` and `ifn test` (e.g. --trainer.accelerator gpu).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
ROOT=${IFN_RUN_DIR:-runs/quickstart/$(date +%Y%m%d-%H%M%S)}
ifn fit --config configs/quickstart.yaml --trainer.default_root_dir "$ROOT" "$@"
ifn test --config configs/quickstart.yaml --trainer.default_root_dir "$ROOT" --ckpt_path "$ROOT/checkpoints/last.ckpt" "$@" | tee "$ROOT/test.log"
METRICS=$(tail -n 1 "$ROOT/test.log")
python - "$METRICS" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
keys = ["test/geometric_error_mm", "test/geometric_error_mm_mean_face", "test/photometric_error",
        "test/photometric_error_mean_face", "test/iou", "test/iou_mean_face",
        *(f"test/param_rel_rmse_{g}" for g in ("rotation", "shape", "expression", "reflectance", "illumination"))]
print(json.dumps({k: round(m[k], 3) for k in keys if k in m}, indent=2))
gain = 1 - m["test/geometric_error_mm"] / m["test/geometric_error_mm_mean_face"]
print(f"geometric error {100 * gain:.1f}% below the mean face; all metrics: {sys.argv[1]}")
PY
