#!/usr/bin/env bash
# The GPU check: on one CUDA GPU, in about 8 minutes, measure what the CPU machines cannot.
#
#   bash benchmarks/gpu_check.sh            # or: make gpu-check
#
# 1. every canonical U-Net arm (base size), forward and forward+backward latency (CUDA events)
#    and peak memory (max allocated) at 64, 128, 256 px, float32 and bf16 autocast
#    (python -m lambda_blocks.profiling --unet base --device cuda);
# 2. baseline vs moebius side by side, fwd and training step, fp32 and bf16, 64-256 px
#    (benchmarks/bench_unet.py --device cuda);
# 3. a short paper-preset training of two arms (linear and lmi, 64 px, 400 steps, bf16 autocast),
#    collected like any run.
# Writes results/gpu-<device>-profile.csv, results/gpu-<device>-unet_bench.csv and
# results/gpu-<device>-train.csv (device = the GPU's name, lower-case, dashes). Each stage has its
# own time limit so a slow stage cannot take the others down; the runs resume if repeated.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
DEV=$($PY -c "import torch,re; assert torch.cuda.is_available(), 'no CUDA device'; print(re.sub(r'[^a-z0-9]+','-',torch.cuda.get_device_name(0).lower()).strip('-'))") || { echo "gpu_check: no CUDA GPU here" >&2; exit 2; }
OUT=results; mkdir -p "$OUT"
ARMS="vanilla linear local_lambda interactive_lambda lmi swap_ffn swap_conv both_lambda both_lambda_dw"
echo "# gpu_check on $DEV"
for DT in float32 bfloat16; do
  timeout 150 $PY -m lambda_blocks.profiling --unet base --attn $ARMS --sizes 64 128 256 --batch 8 \
    --device cuda --dtype $DT --min-run-time 0.2 --min-reps 5 --out "$OUT/gpu-$DEV-profile.csv" || echo "profile $DT: incomplete (rc $?)"
done
timeout 120 $PY benchmarks/bench_unet.py --device cuda --size base --sizes 64 128 256 --batch 32 --rounds 5 \
  --out "$OUT/gpu-$DEV-unet_bench.csv" || echo "bench_unet: incomplete (rc $?)"
RUNS=${GPU_RUNS:-runs/gpu}
for ARM in linear lmi; do
  timeout 90 $PY -m lambda_blocks.train --preset paper --attn $ARM --out "$RUNS" --no-progress \
    --set train.steps=400 --set train.eval_every=200 --set train.ckpt_every=200 --set eval.n_eval=256 \
    --set data.n_train=4096 --set data.n_test=256 --set eval.periodic_n=64 || echo "train $ARM: incomplete (rc $?)"
done
$PY - "$RUNS" "$OUT/gpu-$DEV-train.csv" <<'PY'
import sys
from pathlib import Path
from ablations.collect import collect
out = collect(Path(sys.argv[1]), Path(sys.argv[1]) / "_collected", mode="replace")
out["runs"].to_csv(sys.argv[2], index=False, float_format="%.6g")
print("wrote", sys.argv[2], len(out["runs"]), "runs")
PY
