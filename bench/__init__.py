"""The benchmark harness: `python -m bench.run [--quick] [--out bench/results]` (`make bench`).

Every figure is measured side by side with its reference in the same run and stored as
{median, min, max, n} plus the ratio of the medians. Training, evaluation and inference import only
torch/numpy (and onnxruntime/scipy when present); orchestration parts are skipped with a reason
when dvc/prefect are missing.
"""
