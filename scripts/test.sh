#!/usr/bin/env bash
# Set up (see scripts/setup.sh), lint (ruff, rules in pyproject.toml) and run the test suite:
# the default suite with the package's doctests, then the slow
# tests (real ICT-FaceKit conversion, DDP, CLI runs) when ../shared/data is present.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
export MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-1073741824} MALLOC_TRIM_THRESHOLD_=${MALLOC_TRIM_THRESHOLD_:-1073741824}
ruff check ifn tests benchmarks scripts
python -m pytest -q "$@"
python -m pytest -q -m slow "$@"
