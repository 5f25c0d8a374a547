"""Turn what a user names (a preset, a config.json path, a ModelSpec) into a ModelSpec."""

from __future__ import annotations

from pathlib import Path

from estimator.model_spec import ModelSpec
from estimator.presets import PRESETS
from meshes.validation import InputError, check_choice


def load_preset(name: str) -> ModelSpec:
    """The embedded preset ``name`` (case-insensitive)."""
    key = check_choice("model", str(name).strip().lower(), PRESETS)
    return ModelSpec.from_dict({"name": key, **PRESETS[key]})


def resolve_model(model: ModelSpec | str | Path) -> ModelSpec:
    """A ModelSpec from a spec, a preset name, or a path to an HF config.json."""
    if isinstance(model, ModelSpec):
        return model
    if isinstance(model, Path) or str(model).endswith(".json") or Path(str(model)).is_dir():
        path = Path(model)
        return ModelSpec.from_json_file(path / "config.json" if path.is_dir() else path)
    if not isinstance(model, str):
        raise InputError("model", model, "a preset name, a config.json path or a ModelSpec")
    return load_preset(model)
