"""Frozen configuration built once from user arguments and passed down."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from splitspec.drafts import HiddenStates
from splitspec.errors import SplitspecError
from splitspec.str_enum import StrEnum
from splitspec.suffix_settings import SUFFIX_CONFIG_KEYS, SuffixSettings, suffix_settings


class SpeculationMethod(StrEnum):
    """How drafts are proposed: prompt lookup, a smaller causal LM, IBM's MLP speculator, an EAGLE or
    EAGLE-3 head (these three read the target's hidden states), or suffix trees over this request and
    past outputs."""

    NGRAM = "ngram"
    DRAFT_MODEL = "draft_model"
    MLP_SPECULATOR = "mlp_speculator"
    EAGLE = "eagle"
    EAGLE3 = "eagle3"
    SUFFIX = "suffix"


SPECULATION_METHODS = tuple(m.value for m in SpeculationMethod)
HIDDEN_STATES_BY_METHOD = {
    SpeculationMethod.MLP_SPECULATOR: HiddenStates.LAST,
    SpeculationMethod.EAGLE: HiddenStates.ALL,
    SpeculationMethod.EAGLE3: HiddenStates.ALL,
}
DEFAULT_NUM_SPECULATIVE_TOKENS = 10
"""The commands' default K: an upper bound, since adaptive K drafts fewer where more would not pay
(10 is also the prompt_lookup_num_tokens of transformers' documented example)."""
METHODS_WITHOUT_MODEL = (SpeculationMethod.NGRAM, SpeculationMethod.SUFFIX)
HIDDEN_STATE_METHODS = (SpeculationMethod.EAGLE3, SpeculationMethod.EAGLE, SpeculationMethod.MLP_SPECULATOR)
"""Heads that read the target's hidden states: they can draft beside it, in the verifier."""
MAX_PROMPT_LOOKUP = 64
"""The longest n-gram a verifier drafting n-grams itself (VerifyStep.local_draft) will match."""


MAX_TREE_WIDTH = 16
"""The most branches per drafted token a request may ask for (tree_width)."""


def check_prompt_lookup(lookup_min: int, lookup_max: int, limit: int | None = None) -> None:
    """The n-gram sizes of prompt lookup: 1 <= min <= max (<= limit, when given)."""
    if not 1 <= lookup_min <= lookup_max or (limit is not None and lookup_max > limit):
        bound = f" <= {limit}" if limit is not None else ""
        raise SplitspecError(
            f"need 1 <= prompt_lookup_min <= prompt_lookup_max{bound}, got min={lookup_min}, max={lookup_max}"
        )


QUANTIZATIONS = ("int8", "int4", "gguf", "fp8")
"""How a native runner may hold its projections' weights (splitspec.models.quantized_linear)."""


@dataclass(frozen=True)
class SpeculativeConfig:
    """How drafts are proposed: "ngram", "draft_model", "mlp_speculator", "eagle", "eagle3" or "suffix" (all but
    ngram and suffix read `draft_model`)."""

    method: SpeculationMethod
    num_speculative_tokens: int
    prompt_lookup_max: int = 4
    prompt_lookup_min: int = 1
    draft_model: str | None = None
    draft_top_k: int = 16
    """A sampling draft model draws from its own top-k; that truncated distribution is the exact q."""
    adaptive: bool = True
    """Draft fewer tokens (down to none) per sequence when measured acceptance says more would cost time."""
    suffix: SuffixSettings = field(default_factory=SuffixSettings)
    quantization: str | None = None
    """draft_model: how the draft model's projections are held (RunnerConfig.quantization)."""
    tree_width: int = 1
    """The most branches a drafted token may have: 1 drafts chains; more lets drafters that branch
    (ngram for now) draft trees of num_speculative_tokens tokens, verified in one pass (splitspec.draft_tree)."""

    def __post_init__(self) -> None:
        if self.method not in SPECULATION_METHODS:
            raise SplitspecError(
                f"speculative method {self.method!r} is not supported; use one of {', '.join(SPECULATION_METHODS)}"
            )
        object.__setattr__(self, "method", SpeculationMethod(self.method))
        if not isinstance(self.num_speculative_tokens, int) or self.num_speculative_tokens < 1:
            raise SplitspecError(
                f"num_speculative_tokens must be a positive integer, got {self.num_speculative_tokens!r}"
            )
        check_prompt_lookup(self.prompt_lookup_min, self.prompt_lookup_max)
        if self.method in METHODS_WITHOUT_MODEL and self.draft_model:
            raise SplitspecError(f'speculative method "{self.method}" takes no "model"; drop it or use "draft_model"')
        if self.method not in METHODS_WITHOUT_MODEL and not self.draft_model:
            raise SplitspecError(f'speculative method "{self.method}" needs "model": a checkpoint path')
        if not isinstance(self.tree_width, int) or isinstance(self.tree_width, bool):
            raise SplitspecError(f"tree_width must be an integer, got {self.tree_width!r}")
        if not 1 <= self.tree_width <= MAX_TREE_WIDTH:
            raise SplitspecError(f"tree_width must be 1 to {MAX_TREE_WIDTH}, got {self.tree_width}")
        if self.draft_top_k < 1:
            raise SplitspecError(f"draft_top_k must be >= 1, got {self.draft_top_k}")
        if self.quantization is not None and self.method != SpeculationMethod.DRAFT_MODEL:
            raise SplitspecError(f'"quantization" is for a draft model\'s weights, not the {self.method} drafter')


_SPEC_CONFIG_KEYS = {
    "method",
    "model",
    "num_speculative_tokens",
    "prompt_lookup_max",
    "prompt_lookup_min",
    "draft_tensor_parallel_size",
    "draft_top_k",
    "adaptive",
    "quantization",
    "tree_width",
    *SUFFIX_CONFIG_KEYS,
}


def build_speculative_config(
    speculative_config: dict[str, Any] | None,
    *,
    speculative_model: str | None = None,
    num_speculative_tokens: int | None = None,
    ngram_prompt_lookup_max: int | None = None,
    ngram_prompt_lookup_min: int | None = None,
    speculative_draft_tensor_parallel_size: int | None = None,
) -> SpeculativeConfig | None:
    """Merge the `speculative_config` dict and the older vLLM/Aphrodite keyword spellings."""
    spec = dict(speculative_config or {})
    unknown = set(spec) - _SPEC_CONFIG_KEYS
    if unknown:
        raise SplitspecError(
            f"unknown speculative_config keys {sorted(unknown)}; known keys are {sorted(_SPEC_CONFIG_KEYS)}"
        )
    legacy = {
        "model": speculative_model,
        "num_speculative_tokens": num_speculative_tokens,
        "prompt_lookup_max": ngram_prompt_lookup_max,
        "prompt_lookup_min": ngram_prompt_lookup_min,
        "draft_tensor_parallel_size": speculative_draft_tensor_parallel_size,
    }
    for key, value in legacy.items():
        if value is not None:
            spec.setdefault(key, value)
    if not spec or (set(spec) <= {"draft_tensor_parallel_size"}):
        return None

    draft_tp = spec.get("draft_tensor_parallel_size")
    if draft_tp not in (None, 1):
        raise SplitspecError(
            f"draft tensor parallel size {draft_tp} is not supported: the draft runs on one device; use 1"
        )
    model = spec.get("model")
    method = spec.get("method")
    if model == "[ngram]":
        method, model = method or "ngram", None
    if method is None:
        method = detect_method(model) if model else SpeculationMethod.NGRAM
    suffix = suffix_settings(spec)
    if method == SpeculationMethod.SUFFIX:
        spec.setdefault("num_speculative_tokens", suffix.max_tree_depth)
        spec.setdefault("adaptive", False)  # suffix decoding sizes its own drafts
    if "num_speculative_tokens" not in spec:
        raise SplitspecError("speculation needs num_speculative_tokens (how many tokens to draft per round)")

    prompt_lookup_max = spec.get("prompt_lookup_max")
    prompt_lookup_min = spec.get("prompt_lookup_min")
    if prompt_lookup_max is None:
        prompt_lookup_max = max(4, prompt_lookup_min or 1)
    if prompt_lookup_min is None:
        prompt_lookup_min = 1
    return SpeculativeConfig(
        method=method,
        num_speculative_tokens=spec["num_speculative_tokens"],
        prompt_lookup_max=prompt_lookup_max,
        prompt_lookup_min=prompt_lookup_min,
        draft_model=model,
        draft_top_k=spec.get("draft_top_k", 16),
        adaptive=bool(spec.get("adaptive", True)),
        suffix=suffix,
        quantization=spec.get("quantization"),
        tree_width=spec.get("tree_width", 1),
    )


@dataclass(frozen=True)
class RunnerConfig:
    """How a model is loaded and how much KV cache it gets."""

    device: str = "auto"
    """"auto" (the first CUDA device, else the CPU), "cpu", "cuda" or "cuda:N"."""
    dtype: str = "auto"
    """"auto" (the checkpoint's on CUDA, float32 on the CPU), "float32", "bfloat16" or "float16"."""
    block_size: int = 16
    kv_cache_memory_bytes: int | None = None
    """None: on CUDA, what gpu_memory_utilization leaves after the weights and a profiling pass; on
    the CPU, 1 GiB."""
    gpu_memory_utilization: float = 0.9
    """The fraction of the GPU's memory the runner may use in all (weights, activations, KV cache)."""
    max_model_len: int | None = None
    """None: the checkpoint's own context length."""
    max_num_seqs: int = 64
    backend: str = "auto"
    """"auto" (native when supported), "native" or "transformers"."""
    kernel_backend: str = "auto"
    """Native runner: "auto", "torch" or "triton" (splitspec_kernels.dispatch)."""
    tensor_parallel_size: int = 1
    """Ranks the native runner's weights and KV heads are split over, one process and device each."""
    enforce_eager: bool = False
    """Never replay CUDA graphs (by default the native runner captures its decode and verify passes on CUDA)."""
    quantization: str | None = None
    """Native runner: None, "int8", "int4" or "gguf" (splitspec.models.quantized_linear)."""
    enable_prefix_caching: bool = True
    """Native runner: keep full blocks of committed tokens for later sequences that start with them
    (splitspec.models.prefix_cache; what a target's verify passes commit, Verifier.rollback)."""


@dataclass(frozen=True)
class SchedulerConfig:
    """How much the in-process engine puts into one target pass."""

    max_num_seqs: int = 64
    max_num_batched_tokens: int = 4096


@dataclass(frozen=True)
class EngineConfig:
    """Everything the in-process engine needs, resolved once from `LLM(...)` arguments and passed down."""

    model_path: str
    tokenizer_path: str
    runner: RunnerConfig
    scheduler: SchedulerConfig
    speculative: SpeculativeConfig | None
    seed: int = 0


def detect_method(model: str | Path) -> SpeculationMethod:
    """The drafter a checkpoint holds, from its config and tensor names, as vLLM guesses it when the
    user gives only "model": an MLP speculator, an EAGLE-3 or EAGLE head, or else a draft model."""
    if is_mlp_speculator_dir(model):
        return SpeculationMethod.MLP_SPECULATOR
    if is_eagle3_dir(model):
        return SpeculationMethod.EAGLE3
    if is_eagle_dir(model):
        return SpeculationMethod.EAGLE
    return SpeculationMethod.DRAFT_MODEL


def is_eagle_dir(model: str | Path) -> bool:
    """An EAGLE head: a one-layer Llama config whose weights hold the `fc` that mixes token embedding
    and target state, or whose name or architecture says EAGLE."""
    path = Path(model)
    if "eagle" in path.name.lower():
        return True
    config = path / "config.json"
    if not config.is_file():
        return False
    if any("eagle" in a.lower() for a in json.loads(config.read_text()).get("architectures") or []):
        return True
    from splitspec.checkpoint import tensor_names

    return any(name.removeprefix("model.") == "fc.weight" for name in tensor_names(path))


def is_eagle3_dir(model: str | Path) -> bool:
    """An EAGLE-3 head in either published layout: Red Hat's speculators format (config.json with
    speculators_model_type "eagle3") or EAGLE's own (architectures LlamaForCausalLMEagle3; midlayer.*
    tensors, or the draft-to-target vocabulary map d2t)."""
    path = Path(model)
    config = path / "config.json"
    if not config.is_file():
        return False
    data = json.loads(config.read_text())
    if data.get("speculators_model_type") == "eagle3" or any(
        "eagle3" in a.lower() for a in data.get("architectures") or []
    ):
        return True
    from splitspec.checkpoint import tensor_names

    names = [name.removeprefix("model.") for name in tensor_names(path)]
    return any(name.startswith("midlayer.") or name == "d2t" for name in names)


def is_mlp_speculator_dir(model: str | Path) -> bool:
    """A local checkpoint whose config.json says it is an MLP speculator (IBM accelerator format)."""
    config = Path(model) / "config.json"
    if not config.is_file():
        return False
    data = json.loads(config.read_text())
    return data.get("model_type") == "mlp_speculator" or "MLPSpeculatorPreTrainedModel" in (
        data.get("architectures") or []
    )
