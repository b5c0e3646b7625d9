#!/usr/bin/env bash
# The GPU bench as run on a lent GPU machine (torch but no dvc/prefect/mlflow there), in time-boxed
# parts so that a part cut short loses only itself. Results go to $1 (default bench/lab/results/gpu):
# profile/ (where a bf16 step's time goes, eager and as one CUDA graph: bench.lab.profile_step),
# training/ (default preset, batch 256 and 1024: the textbook loop against the project's fp32 and bf16
# eager steps and the bf16 step as one CUDA graph, train.cuda_graph), levers/ (the other variants of
# bench.training.PROJECT_VARIANTS at batch 1024), scoring/ (FID on 10,000 samples, ONNX Runtime).
# Merge them with `python -m bench.lab.merge OUT/training/*.json OUT/levers/*.json OUT/scoring/*.json`.
set -uo pipefail
out=${1:-bench/lab/results/gpu}
export PYTHONUNBUFFERED=1 PYTHONPATH=.:src
python=${PYTHON:-python3}
mkdir -p "$out/profile" "$out/training" "$out/levers" "$out/scoring"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
"$python" -c "import torch; print('torch', torch.__version__, 'cudnn', torch.backends.cudnn.version())"
for impl in project_bf16 project_bf16_graph; do
    timeout -k 5 "${PROFILE_S:-40}" "$python" -m bench.lab.profile_step --impl $impl --preset default \
        --batch 256 --device cuda --warmup 20 --steps 30 --out "$out/profile/$impl-b256.json" 2>&1 | tail -1
done
timeout -k 5 "${TRAINING_S:-200}" "$python" -m bench.run --only training --presets default --batches 256 1024 \
    --impls textbook project project_bf16 project_bf16_graph --out "$out/training"
timeout -k 5 "${LEVERS_S:-150}" "$python" -m bench.run --only training --presets default --batches 1024 \
    --impls textbook project_bf16_fused project_bf16_fused_graph --out "$out/levers"
timeout -k 5 "${SCORING_S:-90}" "$python" -m bench.run --only fid --only inference --out "$out/scoring"
exit 0
