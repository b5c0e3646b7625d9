"""What the Prefect flows in `pipelines/` call: the workspace snapshot and lock, the temporary Prefect
server, team mode and the retrain summary (DVC stages run from Python: `vaegan.dvc_commands`)."""
