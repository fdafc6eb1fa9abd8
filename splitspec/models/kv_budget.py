"""How much memory the KV cache gets on a GPU, as vLLM decides it with `gpu_memory_utilization`.

Load the weights, run one profiling pass as large as the limits allow, and give the KV cache what
is left of that fraction of the device: fraction x total - (everything in use now) - (the pass's
activation peak). `kv_cache_memory_bytes` overrides all of it; on the CPU it is the only setting.
"""

from __future__ import annotations

from splitspec.errors import SplitspecError
from splitspec.models.runner import ForwardInput

CPU_KV_CACHE_BYTES = 1 << 30
"""The KV cache on the CPU when kv_cache_memory_bytes is not given."""
PROFILE_ROWS_PER_SEQUENCE = 16
"""Logit rows per sequence in the profiling pass: a verify pass's K + 1 for K up to 15."""
SAMPLING_BUFFERS = 6
"""float64 [rows, vocab] tensors the device-side sampler holds at once (target, sorted copy,
probabilities, two noise tensors, dense q), reserved on top of the forward pass's own peak."""


def profile_inputs(max_model_len: int, max_num_seqs: int) -> list[ForwardInput]:
    """The largest pass the limits allow: `max_num_seqs` sequences (fewer when the context is too
    short for them), one of them as long as the rest of `max_model_len` allows, the others
    `PROFILE_ROWS_PER_SEQUENCE` tokens; each asks for up to that many logit rows."""
    short = min(PROFILE_ROWS_PER_SEQUENCE, max_model_len)
    count = max(1, min(max_num_seqs, max_model_len // short))
    lengths = [max_model_len - short * (count - 1)] + [short] * (count - 1)
    return [ForwardInput(f"__profile_{i}__", [0] * n, min(n, PROFILE_ROWS_PER_SEQUENCE)) for i, n in enumerate(lengths)]


def sampling_workspace_bytes(inputs: list[ForwardInput], vocab_size: int) -> int:
    return SAMPLING_BUFFERS * sum(i.num_logits for i in inputs) * vocab_size * 8


def kv_cache_budget(*, total: int, utilization: float, in_use: int, activation_peak: int, bytes_per_block: int) -> int:
    """Bytes for the KV cache: utilization x total, less what is in use (weights, CUDA context, other
    processes) and the profiling pass's peak. Too little for one block is an error naming the knobs."""
    if not 0 < utilization <= 1:
        raise SplitspecError(f"gpu_memory_utilization must be in (0, 1], got {utilization}")
    budget = int(total * utilization) - in_use - activation_peak
    if budget < bytes_per_block:
        gib = 1 << 30
        raise SplitspecError(
            f"no GPU memory left for the KV cache: gpu_memory_utilization={utilization} allows "
            f"{total * utilization / gib:.2f} GiB of {total / gib:.2f} GiB, {in_use / gib:.2f} GiB is in use "
            f"(weights and others) and the largest pass needs {activation_peak / gib:.2f} GiB; raise "
            "gpu_memory_utilization, lower max_model_len or max_num_seqs, or set kv_cache_memory_bytes"
        )
    return budget
