"""`LLM`: the vLLM-shaped Python API over the in-process engine."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from typing import Sequence as SequenceType

from splitspec.checkpoint import resolve_checkpoint
from splitspec.config import EngineConfig, RunnerConfig, SchedulerConfig, build_speculative_config
from splitspec.devices import resolve_device
from splitspec.drafts import HiddenStates
from splitspec.engine import Engine
from splitspec.entrypoints.llm_metrics import InProcessMetrics
from splitspec.errors import SplitspecError
from splitspec.metrics import Metric
from splitspec.output_grammar import GrammarCompiler
from splitspec.outputs import CompletionOutput, RequestOutput
from splitspec.sampling_params import SamplingParams
from splitspec.sequence import Sequence
from splitspec.stop_checker import StopChecker
from splitspec.token_logprobs import Logprob
from splitspec.tokenizer import chat_prompt, decode_output, eos_token_ids, load_tokenizer

if TYPE_CHECKING:
    from proposer_svc.proposer import Proposer
    from splitspec.models.runner import ModelRunner

# vLLM engine arguments that are accepted for compatibility and change nothing here.
_ACCEPTED_NO_EFFECT = {
    "use_v2_block_manager",
    "trust_remote_code",
    "disable_log_stats",
}


class LLM:
    """Load a target model (and a drafter) and generate, batched, in this process.

    model: a Hugging Face checkpoint directory, a hub id, or "default" (the bundled SmolLM2-135M-Instruct);
    or an EAGLE-3 head in the speculators format, which serves the target it names with itself.
    speculative_config: {"method": "ngram" | "draft_model" | "mlp_speculator" | "eagle" | "eagle3" |
    "suffix", "num_speculative_tokens": K, ...} ("model" alone says which of draft_model,
    mlp_speculator, eagle and eagle3 it holds; suffix takes vLLM's suffix_decoding_* keys); None for
    plain decoding. The older vLLM/Aphrodite keywords (speculative_model, num_speculative_tokens,
    ngram_prompt_lookup_max/min, speculative_draft_tensor_parallel_size) mean the same.
    device: "auto" (the first CUDA device when there is one, else the CPU), "cpu", "cuda" or "cuda:N";
    the target and an in-process drafter both run there.
    gpu_memory_utilization: on CUDA, the fraction of the device the target may use; the KV cache gets
    what the weights and a profiling pass leave of it, unless kv_cache_memory_bytes says (the only
    setting on the CPU, default 1 GiB there).
    quantization: the target's projections held as "int8" (per output row), "int4" (groups of 32; CPU)
    or "gguf" (the 4-bit blocks of the GGUF the checkpoint came from, as shipped; the default model's
    on the CPU); None keeps dtype. Speculation reproduces the target as loaded, quantized.
    enable_prefix_caching (vLLM's, on by default): full KV blocks of committed tokens stay cached, and a
    later request that starts with the same tokens skips computing them (splitspec.models.prefix_cache).
    """

    def __init__(
        self,
        model: str = "default",
        speculative_config: dict[str, Any] | None = None,
        *,
        tokenizer: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        seed: int = 0,
        max_model_len: int | None = None,
        block_size: int = 16,
        kv_cache_memory_bytes: int | None = None,
        gpu_memory_utilization: float = 0.9,
        max_num_seqs: int = 64,
        max_num_batched_tokens: int = 4096,
        kernel_backend: str = "auto",
        tensor_parallel_size: int = 1,
        enforce_eager: bool = False,
        quantization: str | None = None,
        enable_prefix_caching: bool = True,
        speculative_model: str | None = None,
        num_speculative_tokens: int | None = None,
        ngram_prompt_lookup_max: int | None = None,
        ngram_prompt_lookup_min: int | None = None,
        speculative_draft_tensor_parallel_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        unknown = set(kwargs) - _ACCEPTED_NO_EFFECT
        if unknown:
            raise SplitspecError(f"LLM() got unsupported arguments: {', '.join(sorted(unknown))}")
        resolve_device(device)  # refuse an unusable device before loading anything
        model, speculative_config = _speculators_target(model, speculative_config, speculative_model)
        spec = build_speculative_config(
            speculative_config,
            speculative_model=speculative_model,
            num_speculative_tokens=num_speculative_tokens,
            ngram_prompt_lookup_max=ngram_prompt_lookup_max,
            ngram_prompt_lookup_min=ngram_prompt_lookup_min,
            speculative_draft_tensor_parallel_size=speculative_draft_tensor_parallel_size,
        )
        path = resolve_checkpoint(model)
        self.config = EngineConfig(
            model_path=str(path),
            tokenizer_path=tokenizer or str(path),
            runner=RunnerConfig(
                device=device,
                dtype=dtype,
                block_size=block_size,
                kv_cache_memory_bytes=kv_cache_memory_bytes,
                gpu_memory_utilization=gpu_memory_utilization,
                max_model_len=max_model_len,
                max_num_seqs=max_num_seqs,
                kernel_backend=kernel_backend,
                tensor_parallel_size=tensor_parallel_size,
                enforce_eager=enforce_eager,
                quantization=quantization,
                enable_prefix_caching=enable_prefix_caching,
            ),
            scheduler=SchedulerConfig(max_num_seqs, max_num_batched_tokens),
            speculative=spec,
            seed=seed,
        )
        self.runner = self._load_target()
        self.tokenizer = load_tokenizer(Path(self.config.tokenizer_path))
        self.engine = self._build_engine(self._build_proposer())
        self._request_counter = itertools.count()
        self._metrics = InProcessMetrics(self.engine, self.runner)

    def _load_target(self) -> ModelRunner:
        from splitspec.models.loader import load_runner

        return load_runner(Path(self.config.model_path), self.config.runner)

    def _build_proposer(self) -> Proposer | None:
        spec = self.config.speculative
        if spec is None:
            return None
        from proposer_svc.factory import build_proposer

        return build_proposer(
            spec,
            target_vocab_size=self.runner.vocab_size,
            target_hidden_size=getattr(self.runner, "hidden", None),
            target_model=self.config.model_path,
            dtype=self.config.runner.dtype,
            device=self.config.runner.device,
            max_num_seqs=self.config.runner.max_num_seqs,
        )

    def _build_engine(self, proposer: Proposer | None) -> Engine:
        """The verify pass returns the hidden states the drafter reads; adaptive K measures the
        target's pass costs first."""
        from verifier_svc.verifier import Verifier

        spec = self.config.speculative
        eos = eos_token_ids(Path(self.config.model_path), self.tokenizer)
        stop_checker = StopChecker(eos, self.runner.max_model_len, self._detokenize)
        cost_model = None
        if spec is not None and spec.adaptive:
            from splitspec.adaptive_k import PassCostModel

            scheduler = self.config.scheduler
            max_rows = min(scheduler.max_num_batched_tokens, scheduler.max_num_seqs * (spec.num_speculative_tokens + 1))
            cost_model = PassCostModel.calibrate(self.runner, max_rows)
        verifier = (
            Verifier(self.runner, proposer.hidden_states, proposer.hidden_layers)
            if proposer
            else Verifier(self.runner, HiddenStates.NONE)
        )
        return Engine(
            verifier,
            proposer,
            spec.num_speculative_tokens if spec else 0,
            stop_checker,
            self.config.scheduler,
            seed=self.config.seed,
            cost_model=cost_model,
            grammars=GrammarCompiler(self.tokenizer, self.runner.vocab_size, eos),
            tree_width=spec.tree_width if spec else 1,
        )

    def close(self) -> None:
        """Stop a tensor-parallel target's worker processes now (garbage collection and the process's
        exit stop them too); the LLM cannot generate after."""
        self.runner.close()

    def get_metrics(self) -> list[Metric]:
        """This LLM's counters, gauges and histograms so far, under the names the services serve to
        Prometheus (vLLM's `LLM.get_metrics()`): requests by finish reason, prompt and generated
        tokens, time to first token, time between steps that gave a request tokens, request latency,
        speculation counters (accepted by draft position as a Vector), KV usage, preemptions."""
        return self._metrics.read()

    def get_tokenizer(self):
        return self.tokenizer

    def generate(
        self,
        prompts: str | dict | SequenceType[str | dict],
        sampling_params: SamplingParams | SequenceType[SamplingParams] | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Generate for every prompt (strings or {"prompt_token_ids": [...]}), batched; outputs in prompt order."""
        if isinstance(prompts, (str, dict)):
            prompts = [prompts]
        prompts = list(prompts)
        if sampling_params is None:
            sampling_params = SamplingParams()
        params = (
            [sampling_params] * len(prompts) if isinstance(sampling_params, SamplingParams) else list(sampling_params)
        )
        if len(params) != len(prompts):
            raise SplitspecError(f"got {len(prompts)} prompts but {len(params)} sampling params")
        sequences: list[Sequence] = []
        try:
            for prompt, p in zip(prompts, params):
                sequences.append(self._add(prompt, p))
        except BaseException:
            for seq in sequences:  # a rejected prompt must not leave the earlier ones queued for the next call
                self.engine.abort(seq.seq_id)
            raise
        progress = _progress(len(sequences), use_tqdm)
        self._metrics.started(sequences)
        try:
            while self.engine.has_unfinished():
                finished = self.engine.step()
                self._metrics.stepped()
                if progress is not None and finished:
                    progress.update(len(finished))
        except BaseException:
            for seq in sequences:
                self.engine.abort(seq.seq_id)
            self._metrics.aborted()
            raise
        finally:
            if progress is not None:
                progress.close()
        return [self._output(seq) for seq in sequences]

    def chat(
        self,
        messages: list[dict] | list[list[dict]],
        sampling_params: SamplingParams | None = None,
        use_tqdm: bool = True,
        tools: list[dict] | None = None,
    ) -> list[RequestOutput]:
        """Apply the tokenizer's chat template to each conversation, then generate. tools: OpenAI's tool
        definitions, for the template to show the model (as vLLM's LLM.chat)."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        prompts = [self.apply_chat_template(conv, tools) for conv in conversations]
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm)

    def apply_chat_template(self, messages: list[dict], tools: list[dict] | None = None) -> str:
        return chat_prompt(self.tokenizer, messages, tools)

    def _add(self, prompt: str | dict, params: SamplingParams) -> Sequence:
        seq_id = str(next(self._request_counter))
        if isinstance(prompt, dict):
            if set(prompt) - {"prompt_token_ids", "prompt"} or "prompt_token_ids" not in prompt:
                raise SplitspecError('a token prompt is a dict {"prompt_token_ids": [...]}')
            ids = [int(t) for t in prompt["prompt_token_ids"]]
            return self.engine.add_request(seq_id, prompt.get("prompt"), ids, params)
        if not isinstance(prompt, str):
            raise SplitspecError(f"a prompt is a string or a token prompt dict, got {type(prompt).__name__}")
        if self.tokenizer is None:
            raise SplitspecError(f"{self.config.model_path} has no tokenizer files; pass token prompts instead")
        return self.engine.add_request(seq_id, prompt, self.tokenizer.encode(prompt), params)

    def _detokenize(self, token_ids: list[int], params: SamplingParams) -> str:
        if self.tokenizer is None:
            return ""
        return decode_output(self.tokenizer, token_ids, params)

    def _decoded(self, logprobs: list[dict[int, Logprob]] | None) -> list[dict[int, Logprob]] | None:
        """Each entry with its token's own text, as vLLM gives it."""
        if logprobs is None or self.tokenizer is None:
            return logprobs
        decode = self.tokenizer.decode
        return [{t: replace(lp, decoded_token=decode([t])) for t, lp in entry.items()} for entry in logprobs]

    def _output(self, seq: Sequence) -> RequestOutput:
        text = self.engine.stop_checker.output_text(seq)
        completion = CompletionOutput(
            0, text, seq.output_token_ids, seq.finish_reason, seq.stop_reason, self._decoded(seq.logprobs)
        )
        prompt_logprobs = None
        if seq.params.prompt_logprobs is not None:
            prompt_logprobs = [None, *(self._decoded(seq.prompt_logprobs) or [])]
        return RequestOutput(
            seq.seq_id, seq.prompt, seq.prompt_token_ids, [completion], seq.finished, seq.stats, prompt_logprobs
        )


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="Processed prompts", unit="req")


def _speculators_target(
    model: str, speculative_config: dict[str, Any] | None, speculative_model: str | None
) -> tuple[str, dict[str, Any] | None]:
    """model may be a speculators-format EAGLE-3 head: then the target it names is served with it."""
    from splitspec.eagle3_checkpoint import speculators_serving

    served = speculators_serving(model)
    if served is None:
        return model, speculative_config
    if speculative_config or speculative_model:
        raise SplitspecError(
            f"model {model} is an EAGLE-3 head, which names its target; give it alone, or give the target as "
            "model and the head as speculative_config's model"
        )
    return served
