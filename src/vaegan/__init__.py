"""vaegan: a reproducible VAE-GAN pipeline (DVC stages, MLflow tracking and registry, ONNX export)."""

__version__ = "0.1.0"
