#!/usr/bin/env bash
# The one prepared GPU check (run it through the device tool when a GPU is lent; ~5 minutes):
# the CUDA tests, then training throughput of every kind on the GPU in fp32, bf16 autocast and
# with torch.compile. It installs the project into a fresh venv (torch from the machine's pip).
# Results: $OUT/gpu_tests.log, $OUT/gpu_bench_*.json (one JSON line each), when OUT is set.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/saease-gpu}"; mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 WANDB_MODE=disabled PYTHONUNBUFFERED=1
python3 -m pip install -q -e ".[dev]" 2>&1 | tail -2
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$OUT/gpu_tests.log" | tail -5
for mode in "--precision fp32" "--precision bf16" "--precision bf16 --compile"; do
    tag=$(echo "$mode" | tr -d ' -')
    timeout 150 python3 benchmarks/train.py --device cuda $mode --kappas 8192 32768 --batch-size 8192 --steps 20 \
        --no-saelens 2>&1 | tee "$OUT/gpu_bench_$tag.log" | tail -1 > "$OUT/gpu_bench_$tag.json"
done
tail -n 20 "$OUT"/gpu_bench_*.log
