"""The checkpoint's tokenizer and end-of-sequence ids, as every component reads them."""

from __future__ import annotations

from pathlib import Path

from splitspec.errors import SplitspecError
from splitspec.sampling_params import SamplingParams


def load_tokenizer(path: Path):
    if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def decode_output(tokenizer, token_ids: list[int], params: SamplingParams) -> str:
    """Output tokens as the request's text: special tokens left out unless params.skip_special_tokens
    is false (vLLM's default and options)."""
    return tokenizer.decode(
        token_ids,
        skip_special_tokens=params.skip_special_tokens,
        spaces_between_special_tokens=params.spaces_between_special_tokens,
    )


def chat_prompt(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> str:
    """A conversation as the model expects it: its chat template applied, with the generation prompt.
    tools: OpenAI's tool definitions, which the template shows the model (if it knows how)."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise SplitspecError("this model's tokenizer has no chat template; send a plain prompt instead")
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
    except TemplateError as exc:  # templates raise their own rules (role order, roles they know)
        raise SplitspecError(f"the chat template refused these messages: {exc}") from None


def eos_token_ids(path: Path, tokenizer) -> set[int]:
    from transformers import GenerationConfig

    ids: set[int] = set()
    try:
        eos = GenerationConfig.from_pretrained(str(path)).eos_token_id
    except OSError:
        from splitspec.models.loader import load_config

        eos = getattr(load_config(path), "eos_token_id", None)
    ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids
