"""Turn the user's `model=` argument into a local Hugging Face checkpoint directory."""

from __future__ import annotations

import os
from pathlib import Path

import torch

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


def tensor_names(path: Path) -> list[str]:
    """Names of the tensors in a checkpoint folder's safetensors (headers only) or pytorch_model.bin."""
    return list(read_tensors(path, names_only=True))


def read_tensors(path: Path, *, names_only: bool = False) -> dict[str, torch.Tensor | None]:
    """Every tensor of a checkpoint folder: its *.safetensors, or else pytorch_model.bin (how EAGLE
    heads are often published; read with weights_only, so no code runs). names_only: values are None."""
    from safetensors import safe_open

    tensors: dict[str, torch.Tensor | None] = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                tensors[name] = None if names_only else f.get_tensor(name)
    if not tensors and (path / "pytorch_model.bin").is_file():
        loaded = torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True, mmap=True)
        tensors = {name: None if names_only else t for name, t in loaded.items()}
    return tensors


def read_embedding_and_head(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """A Llama-family checkpoint's input embedding and output head [vocab, hidden] as float32, read
    alone from its safetensors (the head is the embedding when the model ties them)."""
    from safetensors import safe_open

    found: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for name in ("model.embed_tokens.weight", "lm_head.weight"):
                if name in f.keys():
                    found[name] = f.get_tensor(name).float()
    if "model.embed_tokens.weight" not in found:
        raise SplitspecError(f"{path} has no model.embed_tokens.weight in its safetensors; is it a Llama-family model?")
    embedding = found["model.embed_tokens.weight"]
    return embedding, found.get("lm_head.weight", embedding)
