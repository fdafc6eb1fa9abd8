"""How speculation is configured: the `speculative_config` dict, the older keyword spellings, and the errors."""

from __future__ import annotations

import pytest

from splitspec import LLM
from splitspec.config import SpeculativeConfig, build_speculative_config
from splitspec.errors import SplitspecError

NGRAM_DICT = {"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 4, "prompt_lookup_min": 1}
SMALL_KV = 1 << 20  # a few hundred blocks: enough for these tests, and quick to allocate


def test_ngram_dict_builds_the_config_it_names():
    assert build_speculative_config(NGRAM_DICT) == SpeculativeConfig(
        method="ngram", num_speculative_tokens=5, prompt_lookup_max=4, prompt_lookup_min=1
    )


def test_no_speculative_config_means_plain_decoding():
    assert build_speculative_config(None) is None
    assert build_speculative_config({}) is None


def test_model_without_method_means_draft_model():
    config = build_speculative_config({"model": "/ckpt/draft", "num_speculative_tokens": 3})
    assert config.method == "draft_model"
    assert config.draft_model == "/ckpt/draft"
    assert config.num_speculative_tokens == 3


def test_legacy_ngram_keywords_mean_the_same_as_the_dict():
    legacy = build_speculative_config(
        None,
        speculative_model="[ngram]",
        num_speculative_tokens=5,
        ngram_prompt_lookup_max=4,
        ngram_prompt_lookup_min=1,
        speculative_draft_tensor_parallel_size=1,
    )
    assert legacy == build_speculative_config(NGRAM_DICT)


def test_legacy_speculative_model_path_means_draft_model():
    legacy = build_speculative_config(None, speculative_model="/ckpt/draft", num_speculative_tokens=4)
    assert legacy == build_speculative_config(
        {"method": "draft_model", "model": "/ckpt/draft", "num_speculative_tokens": 4}
    )


def test_only_one_lookup_bound_given_keeps_the_other_consistent():
    assert (
        build_speculative_config(
            {"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_min": 6}
        ).prompt_lookup_max
        == 6
    )
    assert (
        build_speculative_config(
            {"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_max": 2}
        ).prompt_lookup_min
        == 1
    )


def test_unknown_speculative_config_key_is_named_with_the_known_ones():
    with pytest.raises(SplitspecError, match="unknown speculative_config keys") as err:
        build_speculative_config({**NGRAM_DICT, "num_lookahead_slots": 3})
    assert "num_lookahead_slots" in str(err.value)
    assert "num_speculative_tokens" in str(err.value)


def test_unknown_method_lists_the_supported_ones():
    with pytest.raises(SplitspecError, match="'medusa' is not supported") as err:
        build_speculative_config({"method": "medusa", "num_speculative_tokens": 3})
    assert all(m in str(err.value) for m in ("ngram", "draft_model", "mlp_speculator", "eagle", "eagle3", "suffix"))


def test_eagle_needs_its_head_checkpoint():
    with pytest.raises(SplitspecError, match='"eagle" needs "model"'):
        build_speculative_config({"method": "eagle", "num_speculative_tokens": 3})


def test_missing_num_speculative_tokens_is_an_error():
    with pytest.raises(SplitspecError, match="needs num_speculative_tokens"):
        build_speculative_config({"method": "ngram"})
    with pytest.raises(SplitspecError, match="needs num_speculative_tokens"):
        build_speculative_config(None, speculative_model="[ngram]")


@pytest.mark.parametrize("k", [0, -1, 2.5, "5"])
def test_num_speculative_tokens_must_be_a_positive_integer(k):
    with pytest.raises(SplitspecError, match="num_speculative_tokens must be a positive integer"):
        build_speculative_config({"method": "ngram", "num_speculative_tokens": k})


def test_lookup_min_above_max_is_an_error():
    with pytest.raises(SplitspecError, match="prompt_lookup_min <= prompt_lookup_max") as err:
        build_speculative_config({**NGRAM_DICT, "prompt_lookup_min": 5, "prompt_lookup_max": 2})
    assert "min=5, max=2" in str(err.value)


def test_lookup_min_below_one_is_an_error():
    with pytest.raises(SplitspecError, match="1 <= prompt_lookup_min"):
        build_speculative_config({**NGRAM_DICT, "prompt_lookup_min": 0})


def test_draft_model_without_model_asks_for_a_checkpoint():
    with pytest.raises(SplitspecError, match='"draft_model" needs "model"'):
        build_speculative_config({"method": "draft_model", "num_speculative_tokens": 3})


def test_ngram_with_a_model_is_an_error():
    with pytest.raises(SplitspecError, match='"ngram" takes no "model"'):
        build_speculative_config({"method": "ngram", "model": "/ckpt/draft", "num_speculative_tokens": 3})


@pytest.mark.parametrize(
    "spec, legacy",
    [
        ({"model": "/ckpt/draft", "num_speculative_tokens": 3, "draft_tensor_parallel_size": 2}, {}),
        (
            None,
            {
                "speculative_model": "/ckpt/draft",
                "num_speculative_tokens": 3,
                "speculative_draft_tensor_parallel_size": 2,
            },
        ),
    ],
)
def test_draft_tensor_parallel_size_two_is_an_error_that_says_use_one(spec, legacy):
    with pytest.raises(SplitspecError, match="draft tensor parallel size 2 is not supported.*use 1"):
        build_speculative_config(spec, **legacy)


def test_llm_dict_form_reaches_the_engine_config(tiny_llama):
    llm = LLM(str(tiny_llama), speculative_config=NGRAM_DICT, kv_cache_memory_bytes=SMALL_KV)
    assert llm.config.speculative == build_speculative_config(NGRAM_DICT)
    assert llm.engine.num_speculative_tokens == 5


def test_llm_legacy_ngram_keywords_mean_the_same_as_the_dict(tiny_llama):
    llm = LLM(
        str(tiny_llama),
        speculative_model="[ngram]",
        num_speculative_tokens=5,
        ngram_prompt_lookup_max=4,
        ngram_prompt_lookup_min=1,
        speculative_draft_tensor_parallel_size=1,
        use_v2_block_manager=True,
        kv_cache_memory_bytes=SMALL_KV,
    )
    assert llm.config.speculative == build_speculative_config(NGRAM_DICT)


def test_llm_legacy_speculative_model_path_loads_a_draft_model(tiny_llama):
    llm = LLM(
        str(tiny_llama), speculative_model=str(tiny_llama), num_speculative_tokens=3, kv_cache_memory_bytes=SMALL_KV
    )
    assert llm.config.speculative.method == "draft_model"
    assert llm.config.speculative.draft_model == str(tiny_llama)
    assert llm.engine.num_speculative_tokens == 3


def test_llm_use_v2_block_manager_is_accepted_and_changes_nothing(tiny_llama):
    with_flag = LLM(
        str(tiny_llama), speculative_config=NGRAM_DICT, use_v2_block_manager=True, kv_cache_memory_bytes=SMALL_KV
    )
    without = LLM(str(tiny_llama), speculative_config=NGRAM_DICT, kv_cache_memory_bytes=SMALL_KV)
    assert with_flag.config == without.config


def test_llm_unknown_keyword_is_named(tiny_llama):
    with pytest.raises(SplitspecError, match="unsupported arguments: swap_space"):
        LLM(str(tiny_llama), swap_space=4)


def test_llm_rejects_a_bad_speculative_config(tiny_llama):
    with pytest.raises(SplitspecError, match="unknown speculative_config keys"):
        LLM(str(tiny_llama), speculative_config={"method": "ngram", "num_speculative_tokens": 5, "k": 5})
