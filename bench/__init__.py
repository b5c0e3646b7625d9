"""The benchmark harness: `python -m bench.run [--quick] [--out bench/results]` (`make bench`).

Every figure is measured side by side with its reference in the same run and stored as
{median, min, max, n} plus the ratio of the medians. Training, evaluation and inference import only
torch/numpy (and onnxruntime/scipy when present); orchestration parts are skipped with a reason
when dvc/prefect are missing. One-off lab tools and their raw results are in `bench/lab/`.

The bench runs from a checkout without `pip install -e .` too (the GPU image): the checkout's
`src/` is put on `sys.path` here, before any bench module imports vaegan.
"""

import sys
from pathlib import Path

_SOURCE = str(Path(__file__).resolve().parents[1] / "src")
if _SOURCE not in sys.path:
    sys.path.insert(0, _SOURCE)
