#!/usr/bin/env bash
# The GPU bench as run on a lent GPU machine (torch but no dvc/prefect/mlflow there), in three
# time-boxed parts so that a part cut short loses only itself. Results go to $1 (default bench/results/gpu):
# training/ (default preset, batch 256 and 1024, fp32 vs bf16, compiled, channels_last),
# scoring/ (FID on 10,000 samples, ONNX Runtime vs eager), extra/ (compile without channels_last).
# Merge them with `python -m bench.merge OUT/*/*.json`.
set -uo pipefail
out=${1:-bench/results/gpu}
export PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
mkdir -p "$out/training" "$out/scoring" "$out/extra"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$python" -c "import torch, onnxruntime as o; print('torch', torch.__version__, 'ort', o.__version__, o.get_available_providers())"
timeout -k 5 "${TRAINING_S:-330}" "$python" -m bench.run --only training --presets default --batches 256 1024 \
    --impls textbook project project_bf16 project_bf16_compiled_cl --out "$out/training"
timeout -k 5 "${SCORING_S:-120}" "$python" -m bench.run --only fid --only inference --out "$out/scoring"
timeout -k 5 "${EXTRA_S:-100}" "$python" -m bench.run --only training --presets default --batches 1024 \
    --impls textbook project_compiled project_bf16_compiled --out "$out/extra"
exit 0
