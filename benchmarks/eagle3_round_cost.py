"""What one EAGLE-3 round costs on a Llama-3.1-8B-shaped target with a head of the published shape
(RedHatAI/Llama-3.1-8B-Instruct-speculator.eagle3: hidden 4096, one layer, a 32,000-token draft
vocabulary), against a plain decoding step. Random weights: this measures cost, not acceptance.

Usage:
  python benchmarks/eagle3_round_cost.py            # on a CUDA machine, bfloat16 (about 2 minutes)
  python benchmarks/eagle3_round_cost.py --smoke    # tiny shapes on the CPU: checks the script

For each batch size, after a prefill of `context` tokens per sequence, and K = 1..8:
- verify: the target's pass over K + 1 rows per sequence that also captures the inputs of the head's
  three layers (what a round with the head beside the target runs), against K=0's one-row pass;
- draft: the head catching up one committed row per sequence, then drafting K tokens (K - 1 more
  steps), batched over the sequences, as Eagle3Proposer does in the verifier or on a proposer pod;
- round / K=0 step: (verify + draft) over the plain step. A round pays when it commits more tokens
  than that ratio (1 + the drafts expected accepted).
It also prints what a committed token's states weigh on the wire when the head sits on a proposer pod.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

SMOKE_CONTEXT, FULL_CONTEXT = 32, 1024


def _target_config(smoke: bool):
    """gpu_kernels' Llama-3.1-8B shapes; the tiny one with 8 layers, enough for the head's three (2, 4, 5)."""
    from gpu_kernels import _llama_config  # benchmarks/ is the script's directory: on sys.path

    config = _llama_config(smoke)
    if smoke:
        config.num_hidden_layers = 8
    return config


def _write_head(folder: Path, config, draft_vocab: int, dtype: torch.dtype, device: torch.device) -> tuple:
    """A speculators-format head of the target's widths with random weights (its own embedding, as
    Red Hat's heads ship), and the target's config.json beside it (all the head reads of the target)."""
    from proposer_svc.eagle3_training import Eagle3Head, HeadShape, eagle3_config, save_eagle3
    from splitspec.eagle3_checkpoint import default_aux_layers

    target_dir, head_dir = folder / "target", folder / "head"
    target_dir.mkdir(parents=True)
    config.save_pretrained(target_dir)
    aux = default_aux_layers(config.num_hidden_layers)
    shape = HeadShape.of_target(config, draft_vocab)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in place in its own dtype
    with torch.device(device):
        head = Eagle3Head(shape, torch.arange(draft_vocab))
    torch.set_default_dtype(default_dtype)
    save_eagle3(head_dir, head, eagle3_config(config, shape, aux, str(target_dir), 8, str(dtype).split(".")[-1]))
    return target_dir, head_dir, aux


def _timed(fn, device: torch.device, repeats: int) -> float:
    """Median seconds of `fn` over `repeats` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    from transformers import LlamaForCausalLM

    from proposer_svc.eagle3 import Eagle3Proposer, Eagle3Runner
    from splitspec.drafts import DraftRequest
    from splitspec.models.llama import LlamaRunner
    from splitspec.models.runner import ForwardInput

    if not args.smoke and not torch.cuda.is_available():
        print("eagle3_round_cost: no CUDA device; use --smoke on the CPU", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.smoke else "cuda")
    dtype = torch.float32 if args.smoke else torch.bfloat16
    config = _target_config(args.smoke)
    context = SMOKE_CONTEXT if args.smoke else FULL_CONTEXT
    draft_vocab = 256 if args.smoke else 32000
    batches = [int(b) for b in args.batches.split(",")]
    max_batch, max_k = max(batches), 8

    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    with torch.device(device):
        weights = dict(LlamaForCausalLM(config).eval().state_dict())
    torch.set_default_dtype(default_dtype)
    head_dim = config.hidden_size // config.num_attention_heads
    kv_bytes = 2 * config.num_hidden_layers * max_batch * (context + 4 * max_k) * config.num_key_value_heads
    kv_bytes *= head_dim * torch.finfo(dtype).bits // 8
    target = LlamaRunner(None, config, weights=weights, device=device, dtype=dtype, kv_cache_memory_bytes=kv_bytes,
                         max_num_seqs=max_batch)  # fmt: skip
    del weights
    with tempfile.TemporaryDirectory() as folder:
        target_dir, head_dir, aux = _write_head(Path(folder), config, draft_vocab, dtype, device)
        head_kv = 2 * max_batch * (context + 4 * max_k) * config.num_key_value_heads * head_dim * 4
        runner = Eagle3Runner(head_dir, target_dir, device=device, dtype=dtype, kv_cache_memory_bytes=head_kv,
                              max_num_seqs=max_batch)  # fmt: skip
    drafter = Eagle3Proposer(runner)
    state_bytes = len(aux) * config.hidden_size * torch.finfo(dtype).bits // 8
    print(f"target: {'tiny (smoke)' if args.smoke else 'Llama-3.1-8B'} shapes, {dtype}, kernels={target.kernels.name}, "
          f"context {context}; head layers {list(aux)}, draft vocabulary {draft_vocab}; "
          f"states on the wire per committed token: {state_bytes / 1024:.2f} KiB")  # fmt: skip
    print("  batch  K   verify ms   draft ms   round ms   K=0 step ms   round / K=0 step")
    gen = torch.Generator().manual_seed(0)
    for batch in batches:
        ids = [f"s{b}" for b in range(batch)]
        prompts = torch.randint(0, config.vocab_size, (batch, context), generator=gen).tolist()
        _, states = target.forward_with_hidden([ForwardInput(i, p, 1, context) for i, p in zip(ids, prompts)], aux)
        width = len(aux) * config.hidden_size
        rows = states[:, :width].reshape(batch, context, width)
        drafter.propose([DraftRequest(i, p, 1, hidden_state=rows[b]) for b, (i, p) in enumerate(zip(ids, prompts))])

        def plain_step() -> None:
            target.forward([ForwardInput(i, [p[-1]], 1) for i, p in zip(ids, prompts)])
            for i in ids:
                target.truncate(i, context)

        plain = _timed(plain_step, device, args.repeats)
        for k in range(1, max_k + 1):
            fed = torch.randint(0, config.vocab_size, (batch, k + 1), generator=gen).tolist()

            def verify() -> None:
                target.forward_with_hidden([ForwardInput(i, f, k + 1, k + 1) for i, f in zip(ids, fed)], aux)
                for i in ids:
                    target.truncate(i, context)

            committed = [p + [f[0]] for p, f in zip(prompts, fed)]  # one more token committed: its row caught up
            new_rows = rows[:, -1:]

            def draft() -> list:
                requests = [
                    DraftRequest(i, c, k, hidden_state=new_rows[b]) for b, (i, c) in enumerate(zip(ids, committed))
                ]
                return drafter.propose(requests)

            verify_s, draft_s = _timed(verify, device, args.repeats), _timed(draft, device, args.repeats)
            if any(len(d.token_ids) != k for d in draft()):
                raise RuntimeError(f"the head drafted fewer than {k} tokens: the timing would be of less work")
            print(f"  {batch:>5} {k:>2} {verify_s * 1e3:11.2f} {draft_s * 1e3:10.2f} {(verify_s + draft_s) * 1e3:10.2f} "
                  f"{plain * 1e3:13.2f} {(verify_s + draft_s) / plain:18.2f}")  # fmt: skip
        for i in ids:
            target.free(i)
            drafter.release(i)
    return 0


if __name__ == "__main__":
    sys.exit(main())
