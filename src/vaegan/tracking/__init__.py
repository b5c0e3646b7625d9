"""MLflow at the edge: the tracking store and the MLflow run of a training."""
