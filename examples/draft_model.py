"""vLLM's draft-model example (older keyword spelling) with local paths.

Usage: python examples/draft_model.py [TARGET] [DRAFT]   (both default to the bundled model)
"""

import sys

from splitspec import LLM, SamplingParams

prompts = ["The future of AI is"]
sampling_params = SamplingParams(temperature=0.8, top_p=0.95)

llm = LLM(
    model=sys.argv[1] if len(sys.argv) > 1 else "default",
    tensor_parallel_size=1,
    speculative_model=sys.argv[2] if len(sys.argv) > 2 else "default",
    num_speculative_tokens=5,
    speculative_draft_tensor_parallel_size=1,
    use_v2_block_manager=True,
)
outputs = llm.generate(prompts, sampling_params)

for output in outputs:
    prompt = output.prompt
    generated_text = output.outputs[0].text
    print(f"Prompt: {prompt!r}, Generated text: {generated_text!r}")
