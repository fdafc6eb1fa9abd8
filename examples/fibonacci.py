"""Greedy n-gram speculation on the bundled default model. Usage: python examples/fibonacci.py [MODEL]"""

import sys

from splitspec import LLM, SamplingParams

llm = LLM(
    model=sys.argv[1] if len(sys.argv) > 1 else "default",
    speculative_config={"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 4, "prompt_lookup_min": 1},
)
outs = llm.generate(["Write a Python function to calculate fibonacci:"], SamplingParams(temperature=0, max_tokens=200))
print(outs[0].outputs[0].text)
stats = outs[0].spec_stats
print(f"mean tokens per target pass: {stats.mean_accepted_tokens_per_round:.2f}")
