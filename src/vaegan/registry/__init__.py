"""The MLflow model registry of the exported ONNX pair. `registration` logs `decoder.onnx` and
`encoder.onnx` in one MLflow run, registers one version of each with the metrics and provenance as
tags (`model_card` writes their description) and points `challenger` at both; `promotion` runs the
pure gate (`gate`) on the challenger against the champion and moves `champion` on both models
together; `verified` loads registered models back only when the sha256 of their `model.onnx`
equals the `onnx_sha256` tag written at registration. `client` is the MLflow edge they share
(connection, error translation, alias lookup) and `lock` the file lock that serialises every
read-decide-write of the aliases. The commands are `vaegan.register` and `vaegan.promote`;
docs/registry.md describes the layout, the tags, the gate and the lock.
"""
