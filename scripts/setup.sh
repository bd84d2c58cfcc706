#!/usr/bin/env bash
# Create .venv (if missing) and install ifn with everything it needs, in ONE pip call
# (later separate installs can break the mediapipe/protobuf/numpy pins).
# Usage: bash scripts/setup.sh [extra pip args...]   e.g. IFN_EXTRAS=dev,gpu bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch and torchvision are pinned in pyproject.toml (one tested pair).
python -m pip install -q -e ".[${IFN_EXTRAS:-dev}]" "$@"
python -c "import ifn, torch; print(f'ifn {ifn.__version__} with torch {torch.__version__} ready in .venv')"
