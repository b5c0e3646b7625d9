"""`vaegan register`: register the exported ONNX pair in the MLflow model registry as `challenger`
(the core is `vaegan.registry.registration.register_models`)."""

from __future__ import annotations

import argparse

from vaegan.config import Config
from vaegan.registry.client import CHALLENGER
from vaegan.registry.registration import register_models


def run(config: Config, args: argparse.Namespace) -> int:
    """`vaegan register`: register the exported pair as challenger and print the versions."""
    registration = register_models(config=config)
    print(
        f"registered {config.registry.decoder_name} v{registration.decoder_version} and "
        f"{config.registry.encoder_name} v{registration.encoder_version} as {CHALLENGER} "
        f"(pair {registration.pair_id}, fid {registration.tags.get('metric.fid')})"
    )
    return 0
