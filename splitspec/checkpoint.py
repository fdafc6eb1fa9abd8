"""Turn the user's `model=` argument into a local Hugging Face checkpoint directory."""

from __future__ import annotations

import os
from pathlib import Path

from splitspec.errors import SplitspecError

DEFAULT_MODEL_ALIASES = ("default", "SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct")


def resolve_checkpoint(model: str) -> Path:
    """A local directory with config.json, the converted default model, or a hub id from the local cache."""
    if not isinstance(model, (str, os.PathLike)) or not str(model):
        raise SplitspecError(f"model must be a checkpoint directory, a hub id or 'default', got {model!r}")
    model = str(model)
    if model in DEFAULT_MODEL_ALIASES:
        from splitspec.default_model import ensure_default_model

        return ensure_default_model()
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SplitspecError(f"{path} has no config.json; point model= at a Hugging Face checkpoint directory")
        return path
    if path.exists() or model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise SplitspecError(f"model {model!r} is not a checkpoint directory (no such directory with config.json)")
    return _from_hub(model)


def _from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])
        )
    except Exception as exc:
        raise SplitspecError(
            f"could not fetch {repo_id!r} from the Hugging Face hub ({type(exc).__name__}). Download it where "
            "the hub is reachable (`huggingface-cli download "
            f"{repo_id} --local-dir DIR`) and pass model=DIR, or use model='default' for the bundled model"
        ) from None
