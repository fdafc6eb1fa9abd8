"""splitspec.rpc.wire: drafts and tensors survive a real protobuf encode/decode bit for bit."""

from __future__ import annotations

import grpc
import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from splitspec import draft_tree
from splitspec.draft_limits import MAX_DRAFTS_PER_STEP
from splitspec.drafter_traits import DrafterTraits
from splitspec.drafts import Draft, HiddenStates
from splitspec.errors import ServiceError
from splitspec.rpc import wire
from splitspec.rpc.wire import concat_rows, draft_from_proto, draft_to_proto, tensor_from_proto, tensor_to_proto
from splitspec.sparse_distribution import SparseDistribution
from splitspec_protos import splitspec_v1_pb2 as pb

BITS = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.int64: torch.int64}
# signalling NaN with payload 1, and a negative quiet NaN with a payload, as raw bits
NAN_PAYLOAD_BITS = {
    torch.float32: [0x7F800001, -0x003FFFFF],
    torch.float16: [0x7C01, -0x01FF],
    torch.bfloat16: [0x7F81, -0x003F],
}


def over_the_wire_draft(draft: Draft) -> Draft:
    sent = pb.VerifyStep(committed_len=3, drafts=draft_to_proto(draft)).SerializeToString()
    return draft_from_proto(pb.VerifyStep.FromString(sent).drafts)


def over_the_wire_tensor(tensor: torch.Tensor) -> torch.Tensor:
    return tensor_from_proto(pb.HiddenStates.FromString(tensor_to_proto(tensor).SerializeToString()))


def sparse_q(generator: torch.Generator, k: int, vocab: int = 50_000) -> SparseDistribution:
    token_ids = torch.randperm(vocab, generator=generator)[:k]  # [k] int64
    probs = torch.softmax(torch.randn(k, generator=generator, dtype=torch.float64) * 3, dim=0)  # [k] float64
    return SparseDistribution(token_ids, probs)


def random_bits(dtype: torch.dtype, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Every bit pattern is possible, so NaNs with payloads, infinities, -0.0 and subnormals all turn up."""
    bits = BITS[dtype]
    info = torch.iinfo(bits)
    raw = torch.randint(info.min, info.max, shape, generator=generator, dtype=torch.int64).to(bits)
    return raw.view(dtype)


def assert_bit_exact(received: torch.Tensor, sent: torch.Tensor) -> None:
    assert received.dtype == sent.dtype
    assert received.shape == sent.shape
    assert torch.equal(received.view(BITS[sent.dtype]), sent.view(BITS[sent.dtype]))


def test_one_hot_draft_round_trips_with_q_left_unset():
    draft = Draft(token_ids=[5, 0, 49_151], q=[None, None, None])
    received = over_the_wire_draft(draft)
    assert received.token_ids == [5, 0, 49_151]
    assert received.q == [None, None, None]


def test_sparse_q_round_trips_bit_exact_as_float64():
    generator = torch.Generator().manual_seed(0)
    qs = [sparse_q(generator, 16), None, sparse_q(generator, 1), sparse_q(generator, 7)]
    draft = Draft(token_ids=[int(q.token_ids[0]) if q is not None else 11 for q in qs], q=qs)
    received = over_the_wire_draft(draft)
    assert received.token_ids == draft.token_ids
    for got, want in zip(received.q, qs):
        if want is None:
            assert got is None
            continue
        assert got.token_ids.dtype == torch.int64 and torch.equal(got.token_ids, want.token_ids)
        assert got.probs.dtype == torch.float64
        assert torch.equal(got.probs.view(torch.int64), want.probs.view(torch.int64))


def test_empty_draft_round_trips():
    received = over_the_wire_draft(Draft())
    assert received.token_ids == [] and received.q == []


@pytest.mark.parametrize("dtype", list(BITS), ids=lambda d: str(d).removeprefix("torch."))
def test_tensor_round_trips_bit_exact(dtype):
    sent = random_bits(dtype, (3, 7, 5), torch.Generator().manual_seed(1))
    assert_bit_exact(over_the_wire_tensor(sent), sent)


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float16, torch.bfloat16], ids=lambda d: str(d).removeprefix("torch.")
)
def test_nan_payloads_infinities_and_signed_zeros_survive(dtype):
    specials = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 0.0], dtype=dtype)
    bits = BITS[dtype]
    payload_nans = torch.tensor(NAN_PAYLOAD_BITS[dtype], dtype=bits).view(dtype)
    sent = torch.cat([specials, payload_nans])
    assert_bit_exact(over_the_wire_tensor(sent), sent)


def test_int64_extremes_survive():
    sent = torch.tensor([torch.iinfo(torch.int64).min, -1, 0, torch.iinfo(torch.int64).max])
    assert_bit_exact(over_the_wire_tensor(sent), sent)


@pytest.mark.parametrize("dtype", list(BITS), ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("shape", [(0,), (2, 0, 3), (0, 4)])
def test_empty_tensor_keeps_dtype_and_shape(dtype, shape):
    sent = torch.empty(shape, dtype=dtype)
    assert_bit_exact(over_the_wire_tensor(sent), sent)


@pytest.mark.parametrize("dtype", list(BITS), ids=lambda d: str(d).removeprefix("torch."))
def test_non_contiguous_tensor_arrives_with_its_logical_layout(dtype):
    base = random_bits(dtype, (6, 8), torch.Generator().manual_seed(2))
    for sent in (base.t(), base[:, ::3], base[1:5:2].t()[::2]):
        assert not sent.is_contiguous()
        received = over_the_wire_tensor(sent)
        assert_bit_exact(received, sent)
        assert received.is_contiguous()


@pytest.mark.parametrize("dtype", list(BITS), ids=lambda d: str(d).removeprefix("torch."))
def test_zero_dim_tensor_round_trips(dtype):
    sent = random_bits(dtype, (), torch.Generator().manual_seed(3))
    assert_bit_exact(over_the_wire_tensor(sent), sent)


@pytest.mark.parametrize(
    "msg, problem",
    [
        (pb.HiddenStates(data=b"\0" * 8, dtype="float33", shape=[2]), "unknown dtype"),
        (pb.HiddenStates(data=b"\0" * 8, dtype="Tensor", shape=[2]), "unknown dtype"),
        (pb.HiddenStates(data=b"\0" * 7, dtype="float32", shape=[2]), "do not make"),
        (pb.HiddenStates(data=b"\0" * 8, dtype="float32", shape=[3]), "do not make"),
    ],
)
def test_malformed_hidden_states_are_invalid_argument(msg, problem):
    with pytest.raises(ServiceError, match=problem) as info:
        tensor_from_proto(msg)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rows_from_several_steps_stack_bit_exact(dtype):
    first, second = torch.randn(3, 8).to(dtype), torch.randn(2, 8).to(dtype)
    stacked = tensor_from_proto(concat_rows(tensor_to_proto(first), tensor_to_proto(second)))
    assert stacked.dtype == dtype and stacked.shape == (5, 8)
    assert tensor_to_proto(stacked).data == tensor_to_proto(torch.cat([first, second])).data


@pytest.mark.parametrize("other", [torch.randn(2, 4), torch.randn(2, 8).double(), torch.randn(8)])
def test_rows_that_do_not_stack_are_invalid_argument(other):
    with pytest.raises(ServiceError) as err:
        concat_rows(tensor_to_proto(torch.randn(3, 8)), tensor_to_proto(other))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and "do not stack" in str(err.value)


@pytest.mark.parametrize(
    "traits",
    [
        DrafterTraits("ngram", 5, 128, drafts_after_rejection=True),
        DrafterTraits("draft_model", 4, 64, samples_drafts=True, drafts_after_rejection=True),
        DrafterTraits("mlp_speculator", 3, 128, hidden_states=HiddenStates.LAST, drafts_ahead=False),
        DrafterTraits("eagle", 3, 128, hidden_states=HiddenStates.ALL, drafts_ahead=False),
        DrafterTraits("suffix", 24, 32, sizes_own_drafts=True, remembers_outputs=True),
    ],
)
def test_drafter_traits_cross_the_wire_unchanged(traits):
    assert wire.traits_from_proto(wire.traits_to_proto(traits, "v1")) == traits


def test_a_proposer_from_before_the_k_bound_was_reported_takes_the_default_bound():
    old = pb.ProposerInfo(method="ngram", num_speculative_tokens=5, contract_version="v1")
    assert wire.traits_from_proto(old).max_num_speculative_tokens == MAX_DRAFTS_PER_STEP


@settings(max_examples=50, deadline=None)
@given(st.data())
def test_tree_drafts_round_trip_and_chains_carry_no_parents(data):
    n = data.draw(st.integers(0, 12))
    parents = [data.draw(st.integers(-1, i - 1)) for i in range(n)]
    draft = Draft(list(range(7, 7 + n)), [None] * n, parents)
    sent = draft_to_proto(draft)
    received = over_the_wire_draft(draft)
    assert received.token_ids == draft.token_ids
    assert (received.parents or draft_tree.chain(n)) == parents
    assert received.is_tree == draft.is_tree
    if not draft.is_tree:
        assert all(msg.parent_distance == 0 for msg in sent)


def test_a_parent_before_the_last_committed_token_is_refused():
    with pytest.raises(ServiceError) as refused:
        draft_from_proto([pb.DraftToken(token_id=1), pb.DraftToken(token_id=2, parent_distance=3)])
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "drafts[1].parent_distance" in refused.value.message
