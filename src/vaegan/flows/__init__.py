"""What the Prefect flows in `pipelines/` call: DVC stages run from Python and the retrain summary."""
