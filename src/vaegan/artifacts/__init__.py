"""What the pipeline writes and reads back: checkpoints, ONNX Runtime sessions, PNG grids, atomic
writes and provenance."""
