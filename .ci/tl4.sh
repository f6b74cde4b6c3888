#!/usr/bin/env bash
# CI, third environment: saease on the newest TransformerLens 4.x, where HookedTransformer and
# HookedEncoder are gone and every model is a TransformerBridge (the main environment and the
# sae-lens one keep 3.9, which sae-lens pins). Runs the model, lens and harvest tests there.
# Installs the CPU torch wheel first (an unpinned torch would pull a multi-GB CUDA build).
# The venv lives outside the checkout; set TL4_VENV to reuse one.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 WANDB_MODE=offline PYTHONUNBUFFERED=1
VENV="${TL4_VENV:-${TMPDIR:-/tmp}/saease-tl4-venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q torch==2.13.0
"$VENV/bin/python" -m pip install -q -U -e ".[dev]" "transformer-lens>=4"
"$VENV/bin/python" - <<'PY'
import importlib.metadata as m
v = m.version("transformer-lens")
print("transformer-lens", v, "| transformers", m.version("transformers"), "| torch", m.version("torch"))
assert int(v.split(".")[0]) >= 4, f"transformer-lens {v} installed, expected 4.x"
PY
# -rs lists skips; a skipped test here would mean TransformerLens 4.x was not exercised.
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
"$VENV/bin/python" -m pytest -q -rs -p no:cacheprovider tests/test_models.py tests/test_lens.py \
    tests/test_harvest.py tests/test_harvest_encoder.py 2>&1 | tee "$log"
# the two opt-in tests (SAEASE_TEST_TORCHRUN, SAEASE_TEST_MINILM) skip everywhere by default
if grep "SKIPPED" "$log" | grep -v -e "SAEASE_TEST_TORCHRUN" -e "SAEASE_TEST_MINILM" | grep -q .; then
    echo "tl4.sh: tests were skipped in the TransformerLens 4.x environment" >&2
    exit 1
fi
