#!/usr/bin/env bash
# The GPU bench as run on a lent GPU machine (torch but no dvc/prefect/mlflow there), in time-boxed
# parts so that a part cut short loses only itself. Results go to $1 (default bench/results/gpu):
# profile/ (where a bf16 step's time goes, bench.profile_step), b1024/ and b256/ (training, default
# preset: the textbook loop against the project's variants, bench.training.PROJECT_VARIANTS).
# Merge the training parts with `python -m bench.merge OUT/b*/*.json`.
set -uo pipefail
out=${1:-bench/results/gpu}
export PYTHONUNBUFFERED=1 PYTHONPATH=.:src
python=${PYTHON:-python3}
mkdir -p "$out/profile" "$out/b1024" "$out/b256"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
"$python" -c "import torch; print('torch', torch.__version__, 'cudnn', torch.backends.cudnn.version())"
for batch in 1024 256; do
    timeout -k 5 "${PROFILE_S:-45}" "$python" -m bench.profile_step --impl project_bf16 --preset default \
        --batch $batch --device cuda --warmup 20 --steps 30 --out "$out/profile/bf16-b$batch.json" 2>&1 | tail -32
done
timeout -k 5 "${B1024_S:-300}" "$python" -m bench.run --only training --presets default --batches 1024 \
    --impls textbook project project_bf16 project_bf16_fused project_bf16_cudnn project_bf16_fused_cudnn \
    project_bf16_compiled_cudnn project_bf16_compiled_graphs --out "$out/b1024"
timeout -k 5 "${B256_S:-120}" "$python" -m bench.run --only training --presets default --batches 256 \
    --impls textbook project_bf16_cudnn project_bf16_fused_cudnn project_bf16_compiled_graphs --out "$out/b256"
exit 0
