#!/usr/bin/env bash
# CI, second environment: saease beside sae-lens (which pins transformer-lens<4), to check that
# our SAELens export loads in sae_lens with equal outputs and that SAELens SAEs import back.
# Installs the CPU torch wheel first (an unpinned torch would pull a multi-GB CUDA build).
# The venv lives outside the checkout; set SAELENS_VENV to reuse one.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 WANDB_MODE=offline PYTHONUNBUFFERED=1
VENV="${SAELENS_VENV:-${TMPDIR:-/tmp}/saease-saelens-venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q torch==2.13.0
"$VENV/bin/python" -m pip install -q -e ".[dev]" "sae-lens>=6,<7"
"$VENV/bin/python" - <<'PY'
import importlib.metadata as m
print("sae-lens", m.version("sae-lens"), "| transformer-lens", m.version("transformer-lens"),
      "| torch", m.version("torch"))
PY
# -rs lists skips; a skipped sae_lens test here would mean the install above failed.
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
"$VENV/bin/python" -m pytest -q -rs -p no:cacheprovider tests/test_saelens.py tests/test_saelens_format.py tests/test_lens.py tests/test_synth_bench.py \
    2>&1 | tee "$log"
if grep -q "SKIPPED" "$log"; then
    echo "saelens.sh: sae_lens tests were skipped in the sae-lens environment" >&2
    exit 1
fi
