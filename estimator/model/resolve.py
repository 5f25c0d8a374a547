"""Turn what a user names (a preset, a config.json path, a ModelSpec) into a ModelSpec."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

from estimator.model.hf_config import load_hf_config
from estimator.model.presets import PRESETS
from estimator.model.spec import ModelSpec
from meshes.validation import InputError, check_choice


def load_preset(name: str) -> ModelSpec:
    """The embedded preset ``name`` (case-insensitive)."""
    return _preset(check_choice("model", str(name).strip().lower(), PRESETS))


@cache
def _preset(key: str) -> ModelSpec:
    """Built once per preset: a ModelSpec is a frozen value."""
    return ModelSpec.from_dict({"name": key, **PRESETS[key]})


def resolve_model(model: ModelSpec | str | Path) -> ModelSpec:
    """A ModelSpec from a spec, a preset name, or a path to an HF config.json."""
    if isinstance(model, ModelSpec):
        return model
    if not isinstance(model, (str, Path)):
        raise InputError("model", model, "a preset name, a config.json path or a ModelSpec")
    if not str(model).strip():  # Path('') is '.', which would plan ./config.json
        raise InputError("model", str(model), "a preset name (kvfit models lists them) or a config.json path")
    text = str(model).strip()
    if isinstance(model, str) and text.lower() in PRESETS:
        return load_preset(text)
    if isinstance(model, Path) or text.endswith(".json") or os.path.lexists(text):
        path = Path(model)
        try:
            return load_hf_config(path / "config.json" if path.is_dir() else path)
        except OSError as err:  # a name too long, a loop of links, ...
            raise InputError("model", str(model), f"a readable config.json path ({err.strerror or err})") from None
    return load_preset(model)
