"""Hyperparameter dataclasses that checkpoints store as plain dicts (tuples become lists), so that a
checkpoint loads with `weights_only=True` and every consumer rebuilds the network it describes."""

from __future__ import annotations

import dataclasses
from typing import Any, Self


class StoredArgs:
    """Mixin for frozen dataclasses: `to_dict()` for the checkpoint, `from_dict()` to rebuild."""

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)  # type: ignore[call-overload]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Self:
        """Rebuild from a checkpoint's dict; ValueError when it has a key that is not a field or
        lacks one without a default (a field added later keeps older checkpoints loadable)."""
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]
        names = {f.name for f in fields}
        required = {
            f.name
            for f in fields
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        if not required <= set(values) <= names:
            raise ValueError(f"{cls.__name__} keys {sorted(values)} do not match {sorted(names)}")
        converted: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**converted)
