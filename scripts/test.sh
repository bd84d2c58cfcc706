#!/usr/bin/env bash
# Set up (see scripts/setup.sh) and run the test suite: the default suite, then the slow
# tests (real ICT-FaceKit conversion, DDP, CLI runs) when ../shared/data is present.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
export MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-1073741824} MALLOC_TRIM_THRESHOLD_=${MALLOC_TRIM_THRESHOLD_:-1073741824}
python -m pytest -q "$@"
python -m pytest -q -m slow "$@"
