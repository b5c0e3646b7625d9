#!/usr/bin/env bash
# The lever screen of the sample-quality issue as run on a lent GPU machine (no DVC/MLflow there):
# the quick profile (params.yaml) and variants of it, each with the seeds below, 8 jobs at a time.
# Needs data/prepared and models/evaluator.pt (`dvc repro evaluator`). Results: $1 (default
# bench/lab/results/quality). On a CPU machine the same comparison is a `dvc exp run --queue` grid.
set -uo pipefail
out=${1:-bench/lab/results/quality}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 MKL_NUM_THREADS=2
python=${PYTHON:-python3}
"$python" -m bench.lab.quality --out "$out" --workers "${WORKERS:-8}" --threads 2 --deadline-s "${DEADLINE_S:-0}" \
    --seeds ${SEEDS:-0 1 2} \
    --variant base \
    --variant "translation:train.augment=translation" \
    --variant "translation_cutout:train.augment=translation_cutout" \
    --variant "spectral_norm:model.spectral_norm=true" \
    --variant "spectral_norm_translation:model.spectral_norm=true,train.augment=translation" \
    --variant "lr_d_1e-4:train.lr_discriminator=0.0001" \
    --variant "beta_0.5:train.beta=0.5" \
    --variant "gan_weight_3:train.gan_weight=3" \
    --variant "ema_0.999:train.ema_decay=0.999" \
    --variant "latent_16:model.latent_dim=16" \
    --variant "epochs_12:train.epochs=12" \
    --variant "epochs_24:train.epochs=24" \
    --variant "full_profile:train.epochs=60,train.batch_size=256,train.precision=bf16,train.compile=true,train.channels_last=true"
