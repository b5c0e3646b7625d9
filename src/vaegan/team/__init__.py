"""The team stack: shared PostgreSQL, S3, MLflow and Prefect servers and workers (`python -m vaegan.team`)."""
