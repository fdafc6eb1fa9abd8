"""splitspec: lossless speculative decoding, in-process or split into proposer, verifier and gateway services."""

from splitspec.outputs import CompletionOutput, RequestOutput, SpeculationStats
from splitspec.sampling_params import SamplingParams
from splitspec.structured_outputs import StructuredOutputsParams

__all__ = ["LLM", "SamplingParams", "StructuredOutputsParams", "RequestOutput", "CompletionOutput", "SpeculationStats"]


def __getattr__(name: str):
    # LLM pulls in torch and the runners; import it only when asked for.
    if name == "LLM":
        from splitspec.entrypoints.llm import LLM

        return LLM
    raise AttributeError(f"module 'splitspec' has no attribute {name!r}")
