#!/usr/bin/env bash
# Check the newest releases of the libraries ftlight's speed parts rely on, before users meet
# them: a fresh virtual environment with the newest torch (CPU build), transformers, peft,
# bitsandbytes and lightning, then the differential tests (every speed part against
# speed=plain, on the whole model zoo and in every strategy's conformance suite), with every
# part made to run whatever the versions (FTLIGHT_SPEED_ANY_VERSION=1).
#
#   bash benchmarks/latest_libraries.sh [venv folder]     (default: /tmp/ftlight-latest)
#
# It prints the versions it tested. When the tests pass, widen the ranges in
# ftlight/speed/plan.py (VERIFIED) and pyproject.toml to take the new releases in.
# Not a CI step: it installs from the network and takes about 10 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-/tmp/ftlight-latest}"

rm -rf "$venv"
python3.11 -m venv "$venv"
# shellcheck disable=SC1091
. "$venv/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip install -q --upgrade pip
pip install -q -e ".[dev]" -r plugins/all.txt
# then the newest releases, past ftlight's own upper bounds (pip warns of them and goes on)
pip install -q --upgrade --index-url https://download.pytorch.org/whl/cpu torch \
  || pip install -q --upgrade torch
pip install -q --upgrade transformers peft bitsandbytes lightning accelerate
python - <<'PY'
import importlib.metadata as m
for p in ("torch", "transformers", "peft", "bitsandbytes", "lightning"):
    print(f"{p} {m.version(p)}")
PY
export FTLIGHT_SPEED_ANY_VERSION=1
pytest -q -m "slow or not slow" tests/speed/test_plain.py plugins/*/tests \
  -k "(speed_plain or agree or switches_off) and not real_models"
