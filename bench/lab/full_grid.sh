#!/usr/bin/env bash
# The `full` profile on a lent GPU machine (no DVC/MLflow there): profiles/full.yaml's training and
# evaluation params, read from the file, as the base of every job, then its length (60 -> 120 -> 240
# epochs) and, at 120 epochs, a per-epoch learning-rate decay and a moving average of the decoder,
# each on the seeds below, all jobs at a time on the one GPU. Needs data/prepared and
# models/evaluator.pt (`dvc repro evaluator`, carried to the machine). Results: $1 (default
# bench/lab/results/full-grid); further arguments replace the variants (each
# NAME[:section.key=value,...], as `python -m bench.lab.quality --variant`).
set -uo pipefail
out=${1:-bench/lab/results/full-grid}
export PYTHONUNBUFFERED=1 PYTHONPATH=.:src OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
python=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$python" -c "import torch; print('torch', torch.__version__)"
variants=(full "epochs_120:train.epochs=120" "epochs_240:train.epochs=240"
    "epochs_120_lr_decay_0.98:train.epochs=120,train.lr_decay=0.98"
    "epochs_120_ema_0.999:train.epochs=120,train.ema_decay=0.999")
[ $# -gt 1 ] && variants=("${@:2}")
for i in "${!variants[@]}"; do variants[i]="--variant=${variants[i]}"; done
# profiles/full.yaml as --set overrides; its evaluator keys stay out (the carried evaluator is scored)
mapfile -t full < <("$python" -c 'import yaml
for key, value in yaml.safe_load(open("profiles/full.yaml")).items():
    if not key.startswith("evaluator."):
        print(f"--set={key}={value}")')
[ ${#full[@]} -gt 0 ] || { echo "full_grid.sh: no params read from profiles/full.yaml" >&2; exit 1; }
"$python" -m bench.lab.quality --out "$out" --workers "${WORKERS:-15}" --threads 1 \
    --deadline-s "${DEADLINE_S:-0}" --seeds ${SEEDS:-0 1 2} "${full[@]}" \
    "${variants[@]}"
