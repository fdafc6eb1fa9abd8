"""Conversions between core objects and splitspec.v1 messages, in one place for every service."""

from __future__ import annotations

import math

import grpc
import torch

from splitspec import draft_tree
from splitspec.draft_limits import MAX_DRAFTS_PER_STEP
from splitspec.drafter_traits import DrafterTraits
from splitspec.drafts import Draft, HiddenStates
from splitspec.errors import ServiceError
from splitspec.sampling_params import SamplingParams
from splitspec.sparse_distribution import SparseDistribution
from splitspec.structured_outputs import StructuredOutputsParams
from splitspec.token_logprobs import Logprob
from splitspec_protos import splitspec_v1_pb2 as pb


def draft_step(
    tokens: list[int],
    sent: int,
    num_tokens: int,
    params: SamplingParams,
    seed: int,
    num_prompt_tokens: int,
    hidden_state: pb.HiddenStates | None = None,
    assumed: list[int] | None = None,
    time_limit_s: float = 0.0,
    excluded_first: list[int] | None = None,
    tree_width: int = 1,
) -> pb.DraftStep:
    """What a gateway or a verifier asks a proposer: the committed `tokens` from `sent` (what it holds
    already), and up to num_tokens drafts after them (after `assumed` too, for a draft made ahead, and
    starting with none of `excluded_first`); a tree of them with tree_width > 1."""
    step = pb.DraftStep(
        committed_len=len(tokens), start=sent, num_tokens=num_tokens, temperature=params.temperature,
        top_k=params.top_k, seed=seed, num_prompt_tokens=min(num_prompt_tokens, len(tokens)),
        time_limit_s=time_limit_s, tree_width=tree_width,
    )  # fmt: skip
    step.token_ids.extend(tokens[sent:])
    if hidden_state is not None:
        step.hidden_state.CopyFrom(hidden_state)
    step.assumed_token_ids.extend(assumed or ())
    step.excluded_first_token_ids.extend(excluded_first or ())
    return step


def draft_to_proto(draft: Draft) -> list[pb.DraftToken]:
    tokens = []
    parents = draft.parents if draft.is_tree else draft_tree.chain(len(draft.token_ids))
    for i, (token, q, parent) in enumerate(zip(draft.token_ids, draft.q, parents)):
        msg = pb.DraftToken(token_id=token, parent_distance=0 if parent == i - 1 else i - parent)
        if q is not None:
            msg.q.token_ids.extend(q.token_ids.tolist())
            msg.q.probs.extend(q.probs.tolist())
        tokens.append(msg)
    return tokens


def draft_from_proto(tokens) -> Draft:
    """A draft's tokens; a tree when any parent_distance says so. Raises ServiceError(INVALID_ARGUMENT)
    for a parent before the last committed token."""
    draft, parents = Draft(), []
    for i, msg in enumerate(tokens):
        distance = max(1, msg.parent_distance)
        if distance > i + 1:
            raise ServiceError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"drafts[{i}].parent_distance: {distance} reaches before the last committed token (at most {i + 1})",
            )
        parents.append(i - distance)
        draft.token_ids.append(msg.token_id)
        if msg.HasField("q"):
            draft.q.append(
                SparseDistribution(
                    torch.tensor(list(msg.q.token_ids), dtype=torch.int64),
                    torch.tensor(list(msg.q.probs), dtype=torch.float64),
                )
            )
        else:
            draft.q.append(None)
    if not draft_tree.is_chain(parents):
        draft.parents = parents
    return draft


def tensor_to_proto(tensor: torch.Tensor) -> pb.HiddenStates:
    """Raw bytes plus dtype and shape: bit-exact for every dtype, bfloat16 included."""
    t = tensor.detach().contiguous().cpu()
    raw = t.reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)
    return pb.HiddenStates(data=raw.numpy().tobytes(), dtype=str(t.dtype).removeprefix("torch."), shape=list(t.shape))


def tensor_from_proto(msg: pb.HiddenStates) -> torch.Tensor:
    """Raises ServiceError(INVALID_ARGUMENT) for an unknown dtype or bytes that do not fill the shape."""
    dtype = getattr(torch, msg.dtype, None)
    if not isinstance(dtype, torch.dtype):
        raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, f"hidden states: unknown dtype {msg.dtype!r}")
    shape = tuple(msg.shape)
    expected = math.prod(shape) * dtype.itemsize
    if any(n < 0 for n in shape) or len(msg.data) != expected:
        raise ServiceError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"hidden states: {len(msg.data)} bytes do not make a {msg.dtype} tensor of shape {list(shape)}",
        )
    data = torch.frombuffer(bytearray(msg.data), dtype=torch.uint8) if msg.data else torch.empty(0, dtype=torch.uint8)
    return data.view(dtype).reshape(shape)


def concat_rows(first: pb.HiddenStates, second: pb.HiddenStates) -> pb.HiddenStates:
    """[n, hidden] and [m, hidden] -> [n + m, hidden], bytes untouched (row-major tensors append)."""
    if first.dtype != second.dtype or list(first.shape[1:]) != list(second.shape[1:]) or not first.shape:
        raise ServiceError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"hidden states {first.dtype}{list(first.shape)} and {second.dtype}{list(second.shape)} do not stack",
        )
    return pb.HiddenStates(
        data=first.data + second.data, dtype=first.dtype, shape=[first.shape[0] + second.shape[0], *first.shape[1:]]
    )


def traits_to_proto(traits: DrafterTraits, contract_version: str) -> pb.ProposerInfo:
    return pb.ProposerInfo(
        method=traits.method,
        num_speculative_tokens=traits.num_speculative_tokens,
        max_num_speculative_tokens=traits.max_num_speculative_tokens,
        contract_version=contract_version,
        needs_hidden_states=traits.hidden_states != HiddenStates.NONE,
        needs_all_hidden_states=traits.hidden_states == HiddenStates.ALL,
        samples_drafts=traits.samples_drafts,
        sizes_own_drafts=traits.sizes_own_drafts,
        remembers_outputs=traits.remembers_outputs,
        drafts_ahead=traits.drafts_ahead,
        drafts_after_rejection=traits.drafts_after_rejection,
        hidden_layers=traits.hidden_layers,
    )


def traits_from_proto(info: pb.ProposerInfo) -> DrafterTraits:
    hidden = HiddenStates.NONE
    if info.needs_hidden_states:
        hidden = HiddenStates.ALL if info.needs_all_hidden_states else HiddenStates.LAST
    return DrafterTraits(
        method=info.method,
        num_speculative_tokens=info.num_speculative_tokens,
        # 0: a proposer from before the field, which took the default bound
        max_num_speculative_tokens=info.max_num_speculative_tokens or MAX_DRAFTS_PER_STEP,
        samples_drafts=info.samples_drafts,
        hidden_states=hidden,
        hidden_layers=tuple(info.hidden_layers),
        sizes_own_drafts=info.sizes_own_drafts,
        remembers_outputs=info.remembers_outputs,
        drafts_ahead=info.drafts_ahead,
        drafts_after_rejection=info.drafts_after_rejection,
    )


def logprobs_to_proto(entries: list[dict[int, Logprob]]) -> list[pb.TokenLogprobs]:
    return [
        pb.TokenLogprobs(
            token_ids=list(entry), logprobs=[e.logprob for e in entry.values()], ranks=[e.rank for e in entry.values()]
        )
        for entry in entries
    ]


def logprobs_from_proto(messages) -> list[dict[int, Logprob]]:
    return [{t: Logprob(v, r) for t, v, r in zip(m.token_ids, m.logprobs, m.ranks)} for m in messages]


def structured_outputs_to_proto(params: StructuredOutputsParams) -> pb.StructuredOutputs:
    message = pb.StructuredOutputs(json_object=params.json_object, choice=params.choice or ())
    if params.json is not None:
        message.json = params.json_schema
    for kind in ("regex", "grammar"):
        if getattr(params, kind) is not None:
            setattr(message, kind, getattr(params, kind))
    return message


def structured_outputs_from_proto(message: pb.StructuredOutputs) -> StructuredOutputsParams | None:
    """None for an empty message; a SplitspecError naming what is wrong for one that is not one kind."""
    if message.ByteSize() == 0:
        return None
    return StructuredOutputsParams(
        json=message.json or None,
        json_object=message.json_object,
        regex=message.regex or None,
        choice=list(message.choice) or None,
        grammar=message.grammar or None,
    )
