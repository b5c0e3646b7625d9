"""Self-describing checkpoints: one dict, written atomically, loaded without unpickling code.

Every checkpoint is a dict whose values are tensors, containers of tensors or plain Python values,
with two entries this module reads:

    format:         "vaegan-checkpoint/1"
    kind:           "vaegan" (training state or final weights) | "evaluator"

What else a kind holds is its writer's: `vaegan.nn.checkpoint_payload` builds and reads the
"vaegan" kind, `vaegan.scoring.lenet` the "evaluator" kind.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from vaegan.artifacts.atomic_io import write_bytes
from vaegan.errors import CheckpointError, first_line

FORMAT = "vaegan-checkpoint/1"
MODEL_KIND = "vaegan"


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> None:
    """Write `payload` (with `format` added) to `path` atomically.

    Serialised in memory first: `torch.save` to a file records that file's (temporary) name in
    the archive, which would make identical checkpoints differ byte for byte.
    """
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **payload}, buffer)
    write_bytes(path, buffer.getvalue())


def load_checkpoint(
    path: str | os.PathLike[str], kind: str = MODEL_KIND, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load a checkpoint with `weights_only=True`; refuse anything that is not ours or not `kind`."""
    ckpt_path = Path(path)
    if not ckpt_path.is_file():
        raise CheckpointError(f"checkpoint {ckpt_path} does not exist")
    try:
        payload = torch.load(ckpt_path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"checkpoint {ckpt_path} cannot be read: {first_line(exc)}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {ckpt_path} is not a {FORMAT} file")
    if payload.get("kind") != kind:
        raise CheckpointError(
            f"checkpoint {ckpt_path} holds a {payload.get('kind')!r} model, expected {kind!r}"
        )
    return payload
