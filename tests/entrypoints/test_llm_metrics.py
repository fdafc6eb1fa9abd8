"""`LLM.get_metrics()`: the series the gateway serves to Prometheus, for an in-process LLM, equal to
what its requests reported."""

from __future__ import annotations

import gc
import weakref

from splitspec import LLM, SamplingParams
from splitspec.metrics import Counter, Gauge, Histogram, Vector

PROMPTS = [[5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6], [17, 3, 17, 3, 17, 3], list(range(30, 60)) * 2]


def test_get_metrics_counts_what_the_requests_report(tiny_llama):
    # the target drafting for itself: every round accepts drafts, at every position (K fixed: drafts that
    # cost a target pass each would not pay, and adaptive K would rightly stop making them)
    spec = {"method": "draft_model", "model": str(tiny_llama), "num_speculative_tokens": 3, "adaptive": False}
    llm = LLM(str(tiny_llama), speculative_config=spec)
    params = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
    outputs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
    outputs += llm.generate([{"prompt_token_ids": PROMPTS[0]}], params, use_tqdm=False)
    metrics = {(m.name, tuple(sorted(m.labels.items()))): m for m in llm.get_metrics()}

    def get(name: str, **labels):
        return metrics[(name, tuple(sorted(labels.items())))]

    stats = [o.spec_stats for o in outputs]
    assert get("splitspec_request_success", finished_reason="length") == Counter(
        "splitspec_request_success", {"finished_reason": "length"}, len(outputs)
    )
    assert get("splitspec_prompt_tokens").value == sum(len(o.prompt_token_ids) for o in outputs)
    assert get("splitspec_generation_tokens").value == sum(len(o.outputs[0].token_ids) for o in outputs)
    assert get("splitspec_spec_decode_num_draft_tokens").value == sum(s.num_draft_tokens for s in stats)
    assert 0 < get("splitspec_spec_decode_num_accepted_tokens").value == sum(s.num_accepted_tokens for s in stats)
    assert get("splitspec_spec_decode_num_drafts").value == sum(s.drafted_per_position[0] for s in stats)
    per_pos = get("splitspec_spec_decode_num_accepted_tokens_per_pos")
    assert isinstance(per_pos, Vector)
    width = max(len(s.accepted_per_position) for s in stats)
    assert per_pos.values == [sum(s.accepted_per_position[i] for s in stats if i < len(s.accepted_per_position))
                              for i in range(width)]  # fmt: skip
    for name in ("time_to_first_token", "e2e_request_latency"):
        histogram = get(f"splitspec_{name}_seconds")
        assert isinstance(histogram, Histogram) and histogram.count == len(outputs)
        assert histogram.buckets["+Inf"] == len(outputs) and histogram.sum > 0
    assert get("splitspec_num_requests_running") == Gauge("splitspec_num_requests_running", {}, 0)
    assert 0 <= get("splitspec_kv_cache_usage_perc").value < 1
    assert get("splitspec_num_preemptions").value == 0


def test_an_llm_dropped_is_collected_with_its_metrics(tiny_llama):
    """Its meter's callbacks hold the runner: nothing global may keep them (a tensor-parallel runner's
    workers stop only when it is collected)."""
    llm = LLM(str(tiny_llama))
    llm.generate([{"prompt_token_ids": PROMPTS[0]}], SamplingParams(max_tokens=4), use_tqdm=False)
    assert llm.get_metrics()
    runner = weakref.ref(llm.runner)
    del llm
    gc.collect()
    assert runner() is None
