"""vLLM's 70B n-gram example: the target split over four ranks, the draft on one.

Usage: python examples/tensor_parallel.py MODEL   (a local checkpoint whose heads four ranks divide)
"""

import sys

from splitspec import LLM, SamplingParams

prompts = ["The future of AI is"]
sampling_params = SamplingParams(temperature=0.8, top_p=0.95)

llm = LLM(
    model=sys.argv[1],
    tensor_parallel_size=4,
    speculative_config={
        "method": "ngram",
        "num_speculative_tokens": 5,
        "prompt_lookup_max": 4,
        "draft_tensor_parallel_size": 1,
    },
)
outputs = llm.generate(prompts, sampling_params)

for output in outputs:
    prompt = output.prompt
    generated_text = output.outputs[0].text
    print(f"Prompt: {prompt!r}, Generated text: {generated_text!r}")
