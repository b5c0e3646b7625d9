"""FID of an untrained default-preset VAE-GAN (N(0, I) prior) on the pipeline's LeNet scale.
Run from the repository root."""

import torch

from vaegan.config import load_config
from vaegan.nn.networks import build_model, model_args_for
from vaegan.scoring.core import load_scoring

torch.set_num_threads(2)
scoring = load_scoring(load_config("params.yaml", []))
keys = ("fid", "fid_floor", "fid_recon", "precision", "recall")
for seed in (0, 1):
    torch.manual_seed(seed)
    model = build_model(model_args_for("default")).eval()
    m = scoring.score(model, seed=0).metrics
    print(seed, {k: round(m[k], 3) for k in keys}, flush=True)
