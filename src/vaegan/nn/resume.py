"""What a training checkpoint must carry to resume exactly, and when a checkpoint may be resumed.

A run resumes from `<train.checkpoint_dir>/last.pt` when its *resume key* matches the checkpoint's:
the model section, the train section without the keys config.py marks `resume=False`
(`vaegan.config.resume_ignored`), the data's sha256, the number of DDP ranks and the sha256 of the
training code (`training_code()`): after a code change DVC re-runs the stage, and a finished
checkpoint of the old code must not stand in for the new model. The ignored keys change where files
go, how often the run logs or saves, how long it runs or on which device, never the sequence of
updates it makes.
"""

from __future__ import annotations

import functools
import hashlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaegan.artifacts.code_closure import command_closure, package_dir
from vaegan.artifacts.provenance import sha256_bytes
from vaegan.config import Config, resume_ignored
from vaegan.errors import CheckpointError

# The command whose code decides the sequence of updates (dvc.yaml's train stages run it).
TRAINING_COMMAND = "train"


@functools.cache
def training_code() -> tuple[str, ...]:
    """The package files `vaegan train` runs (its import closure; the train stage's code deps in
    dvc.yaml come from the same function), relative to the package directory, sorted."""
    return tuple(str(path) for path in command_closure(TRAINING_COMMAND))


def training_code_sha256() -> str:
    """sha256 over the name and sha256 of each `training_code()` file of the installed package."""
    root = package_dir()
    digest = hashlib.sha256()
    for name in training_code():
        digest.update(f"{name}:{sha256_bytes((root / name).read_bytes())}\n".encode())
    return digest.hexdigest()


def resume_key(config: Config, data_sha256: str, world_size: int) -> dict[str, Any]:
    """The values that must match for a checkpoint to be resumed by this config."""
    ignored = resume_ignored(type(config.train))
    train = {k: v for k, v in config.to_dict()["train"].items() if k not in ignored}
    return {
        "model": config.to_dict()["model"],
        "train": train,
        "data.dataset": config.data.dataset,
        "data_sha256": data_sha256,
        "world_size": world_size,
        "code_sha256": training_code_sha256(),
    }


def key_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Human-readable `name: saved -> current` lines for every differing entry."""
    lines = []
    for name in sorted(set(saved) | set(current)):
        old, new = saved.get(name), current.get(name)
        if isinstance(old, dict) and isinstance(new, dict):
            for key in sorted(set(old) | set(new)):
                if old.get(key) != new.get(key):
                    lines.append(f"{name}.{key}: {old.get(key)!r} -> {new.get(key)!r}")
        elif old != new:
            lines.append(f"{name}: {old!r} -> {new!r}")
    return lines


@dataclass(frozen=True)
class ResumeDecision:
    """`action` is "fresh" (train from scratch), "resume" or "complete" (nothing left to train);
    `set_aside`, when not None, is where the checkpoint must be moved before a fresh start."""

    action: str
    reason: str
    set_aside: str | None = None


def set_aside_path(path: str, step: int) -> str:
    """Where an unfinished checkpoint `path` (`.../last.pt`) at `step` is kept when a new run
    replaces it: `.../last.step<step>.pt`."""
    name = Path(path)
    return str(name.with_name(f"{name.stem}.step{step}{name.suffix}"))


def decide_resume(
    state: dict[str, Any] | None, key: dict[str, Any], target_steps: int, policy: str, path: str
) -> ResumeDecision:
    """What to do with the checkpoint state found at `path` (None when there is none).

    - no checkpoint, or `train.resume: never` -> fresh
    - key differs: a finished run's checkpoint is superseded (fresh); an unfinished one is kept
      and the run refuses (CheckpointError), so that changed params never destroy progress silently
    - key matches: resume; finished at the budget -> complete; past the budget (a smaller
      train.epochs / train.max_steps than the checkpoint's run) -> fresh: a smaller budget is a new
      run, and an unfinished checkpoint is set aside (`set_aside_path`) rather than overwritten
    """
    if state is None:
        return ResumeDecision("fresh", f"no checkpoint at {path}")
    if policy == "never":
        return ResumeDecision("fresh", f"train.resume=never: ignoring {path}")
    differences = key_differences(state.get("resume_key", {}), key)
    completed = bool(state.get("completed", False))
    step = int(state["step"])
    if differences:
        if completed:
            return ResumeDecision(
                "fresh",
                f"{path} is a finished run with other params ({'; '.join(differences)}); starting fresh",
            )
        raise CheckpointError(
            f"{path} holds an unfinished run (step {step}) whose params differ: {'; '.join(differences)}. "
            "Restore those params to resume it, or delete the file (or pass --set train.resume=never) "
            "to start over"
        )
    if step > target_steps:
        beyond = (
            f"{path} is at step {step}, beyond this run's budget of {target_steps} steps "
            "(train.epochs / train.max_steps): a smaller budget is a new run; starting fresh"
        )
        if completed:
            return ResumeDecision("fresh", f"{beyond} (the finished run is replaced at the first checkpoint)")
        aside = set_aside_path(path, step)
        return ResumeDecision("fresh", f"{beyond}; the unfinished run is kept as {aside}", set_aside=aside)
    if completed and step == target_steps:
        return ResumeDecision("complete", f"{path} already finished this run at step {step}")
    return ResumeDecision("resume", f"resuming {path} at step {step}")


def capture_rng() -> dict[str, Any]:
    """The global RNG states of torch (CPU and CUDA), numpy and Python, loadable with weights_only."""
    np_state: Any = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "name": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": [py_version, list(py_internal), py_gauss],
    }


def restore_rng(states: dict[str, Any]) -> None:
    """Put back the RNG states `capture_rng` recorded."""
    torch.set_rng_state(states["torch"])
    if states.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    np_state = states["numpy"]
    np.random.set_state(
        (
            np_state["name"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
