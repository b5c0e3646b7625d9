"""Precision/recall (k=3, LeNet features) of the training images against the test set: what a
generator that drew the training images themselves would score. Run from the repository root."""

import torch

from vaegan.config import load_config
from vaegan.scoring import metrics as M
from vaegan.scoring.core import _fid, _real_features, load_scoring

torch.set_num_threads(2)
scoring = load_scoring(load_config("params.yaml", []))
kw = {"evaluator": scoring.evaluator, "extractor": scoring.feature_extractor, "batch_size": 100,
      "device": scoring.device}  # fmt: skip
with torch.no_grad():
    test, _ = _real_features(scoring.test, **kw).arrays()
    floor, _ = _real_features(scoring.floor, **kw).arrays()
precision, recall = M.precision_recall(test, floor, k=3)
fid = _fid(test, floor)
print(
    f"train ({len(floor)}) vs test ({len(test)}):",
    f"precision {precision:.4f}",
    f"recall {recall:.4f} fid {fid:.3f}",
)
