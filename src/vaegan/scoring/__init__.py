"""Scoring a model: the evaluation core shared by `vaegan evaluate` and the champion check (core),
the evaluator network (lenet), the metrics, the feature extractors and the report."""
