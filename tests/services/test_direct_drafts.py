"""Drafts the verifier fetches from the proposer itself (gateway --direct-drafts, VerifyStep.remote_draft).

The loop tests drive GatewayCore.generate against a scripted verifier that drafts at run time as a
proposer would (test_draft_ahead's drafter) and verifies against its greedy target: the gateway never
drafts, keeps steps in flight, and moves a sequence off a proposer the verifier could not reach. The
service tests run real processes with every link delayed: output is in-process output for every
drafting method, a proposer lost mid-request loses nothing, and rounds of hidden-state drafters no
longer wait for the gateway's links."""

from __future__ import annotations

import asyncio
import signal
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import pytest
import torch
from e2e_requests import (
    MAX_TOKENS,
    PROMPTS,
    SEEDS,
    _drafter,
    _seeded,
    _seeded_in_process,
    assert_seeded_samples_are_plain_decoding_s,
    generate,
    generate_concurrently,
    greedy_request,
    token_ids,
)
from gateway_fakes import K, ScriptedProposer, drafter_continuation, target_output, verify_greedily
from metrics_scrape import accepted_in, drafts_served, scrape, value
from pod_streams import all_streaming, join_all
from service_stack import free_port, running_stack, wait_for
from tiny_checkpoints import write_perturbed_copy
from verifier_stand_in import VerifierStandIn

from gateway_svc.drafter_pool import DrafterPool
from gateway_svc.generation import GatewayCore
from gateway_svc.round_plan import RoundSettings
from splitspec import LLM, SamplingParams
from splitspec.drafter_traits import DrafterTraits
from splitspec.entrypoints.client import stream_generate
from splitspec.rpc.throwaway_certs import make_stack_certificates
from splitspec.rpc.tls import ClientTls
from splitspec_protos import splitspec_v1_pb2 as pb

DELAY_MS = 3.0
PROMPT = [3, 1, 4, 1, 5]


@dataclass
class DirectVerifier(VerifierStandIn):
    """Runs a sequence's steps one at a time in arrival order, each drafted right before it runs by the
    proposer its remote_draft names (drafter_continuation of the context then), unless that proposer is
    in `unreachable`: then the step verifies no drafts and says the proposer failed."""

    pipelined: bool = True
    tokens: list[int] = field(default_factory=list)
    unreachable: set[str] = field(default_factory=set)
    drafted_by: list[str] = field(default_factory=list)
    skipped_rejection_drafts: set[bool] = field(default_factory=set)  # what the remote drafts said
    in_flight: int = 0
    most_in_flight: int = 0
    turn: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def start(self, seq_id: str, token_ids: list[int], *args) -> None:
        self.tokens = list(token_ids)

    async def step(
        self,
        seq_id,
        committed_len,
        draft,
        local_ngram=None,
        pipelined=False,
        assumed=None,
        remote=None,
        every_draft=False,
    ):
        assert pipelined == self.pipelined and not draft.token_ids and local_ngram is None
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            async with self.turn:
                await asyncio.sleep(0.002)  # the proposer's draft, then the pass
                built_on = len(self.tokens)
                failed = remote is not None and remote.proposer in self.unreachable
                drafts = [] if failed or remote is None else drafter_continuation(self.tokens, remote.num_tokens)
                if drafts:
                    self.drafted_by.append(remote.proposer)
                    self.skipped_rejection_drafts.add(remote.skip_rejection_drafts)
                num_accepted, committed = verify_greedily(self.tokens, drafts)
                self.tokens += committed
                return pb.StepResult(
                    committed_len=built_on, num_accepted=num_accepted, token_ids=committed,
                    num_drafted=len(drafts), proposer_failed=failed, draft_wait_s=0.002,
                )  # fmt: skip
        finally:
            self.in_flight -= 1


DRAFT_MODEL = DrafterTraits("draft_model", K, 128, samples_drafts=True, drafts_after_rejection=True)


def _run_direct(
    verifier: DirectVerifier,
    proposers: list[ScriptedProposer],
    max_tokens: int = 60,
    traits: DrafterTraits = DRAFT_MODEL,
) -> list[int]:
    core = GatewayCore(
        [verifier], proposers, None, set(), max_model_len=1 << 20,
        rounds=RoundSettings(
            num_speculative_tokens=K, verifier_ngram=False, direct_drafts=True, pipeline_steps=verifier.pipelined
        ),
        drafters=DrafterPool(traits=traits),
    )  # fmt: skip
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)

    async def collect() -> list[int]:
        return [t async for delta in core.generate(None, PROMPT, params, K) for t in delta.token_ids]

    return asyncio.run(collect())


@pytest.mark.parametrize("pipelined", [True, False])
def test_with_direct_drafts_the_gateway_never_drafts_and_keeps_steps_in_flight(pipelined):
    verifier, proposer = DirectVerifier(pipelined=pipelined), ScriptedProposer()
    assert _run_direct(verifier, [proposer]) == target_output(PROMPT, 60)
    assert proposer.fresh_calls == proposer.ahead_calls == 0, "every draft was the verifier's to fetch"
    assert verifier.drafted_by and set(verifier.drafted_by) == {"proposer"}
    assert verifier.most_in_flight == (2 if pipelined else 1), "pipelined: the next step waits at the verifier"
    assert verifier.skipped_rejection_drafts == {False}, "a draft model has another guess after a rejection"


def test_a_drafter_with_no_other_guess_after_a_rejection_has_the_verifier_skip_those_drafts_ahead():
    verifier = DirectVerifier()
    suffix_like = DrafterTraits("suffix", K, 128, sizes_own_drafts=True, remembers_outputs=True)
    assert _run_direct(verifier, [ScriptedProposer()], traits=suffix_like) == target_output(PROMPT, 60)
    assert verifier.skipped_rejection_drafts == {True}


def test_a_proposer_the_verifier_cannot_reach_is_left_for_another():
    verifier = DirectVerifier(unreachable={"p1"})
    proposers = [ScriptedProposer(address="p1"), ScriptedProposer(address="p2", num_sequences=1)]
    assert _run_direct(verifier, proposers) == target_output(PROMPT, 60)
    assert not proposers[0].available, "marked down after the verifier reported it failed"
    assert verifier.drafted_by and set(verifier.drafted_by) == {"p2"}


def _plain(tiny_llama, max_tokens: int = MAX_TOKENS) -> list[list[int]]:
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    outputs = LLM(str(tiny_llama)).generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
    return [o.outputs[0].token_ids for o in outputs]


@pytest.mark.e2e
@pytest.mark.parametrize("method", ["ngram", "draft_model", "mlp_speculator", "eagle"])
def test_direct_drafts_through_delayed_links_are_in_process_output(method, tiny_llama, tiny_drafts, tmp_path):
    """Drafters that read no hidden states also draft ahead on the verifier's request, while a pass runs."""
    drafter = _drafter(method, tiny_llama, tiny_drafts, tmp_path)
    metrics_port = free_port()
    with running_stack(
        tiny_llama,
        tmp_path,
        method=method,
        k=3,
        draft_model=drafter,
        verifier_args=("--metrics-port", str(metrics_port)),
        gateway_args=("--direct-drafts", "--fixed-k"),
        network_delay_ms=DELAY_MS,
    ) as stack:
        address = stack.gateway.address
        responses = [generate(address, greedy_request(p)) for p in PROMPTS]
        assert [token_ids(r) for r in responses] == _plain(tiny_llama)
        assert generate_concurrently(address, [greedy_request(p) for p in PROMPTS]) == _plain(tiny_llama)
        if method == "draft_model":  # sparse q: the draws follow the draft model's, as in-process
            assert _seeded(address) == _seeded_in_process(tiny_llama, {"method": method, "model": str(drafter)})
        else:  # one-hot drafts: plain decoding's draws
            assert_seeded_samples_are_plain_decoding_s(address, tiny_llama, SEEDS)
        assert wait_for(lambda: stack.verifier_info().num_sequences == 0)
        ahead = scrape(metrics_port)["splitspec_draft_ahead"]
        hits, misses = value(ahead, "_total", outcome="hit"), value(ahead, "_total", outcome="miss")
    if method in ("ngram", "draft_model"):
        assert hits + misses > 0, "drafts were made ahead (whether they hit is the next test's)"
    else:
        assert hits == misses == 0, "assumed tokens have no hidden states: nothing is drafted ahead"
    stats = [r[-1].speculation for r in responses]
    # the gateway never drafts in this mode: drafts verified, and accepted, came through the verifier
    assert sum(s.num_draft_tokens for s in stats) > 0 and sum(s.num_accepted_tokens for s in stats) > 0


@pytest.mark.e2e
def test_drafts_made_ahead_for_the_outcome_that_came_are_used_and_keep_the_output_exact(tiny_llama, tmp_path):
    """The target as its own draft model: every greedy draft is accepted and every guess is right, so
    each step after the first can take the draft its proposer made while the step before was verified."""
    metrics_port = free_port()
    with running_stack(
        tiny_llama,
        tmp_path,
        method="draft_model",
        k=3,
        draft_model=tiny_llama,
        verifier_args=("--metrics-port", str(metrics_port)),
        gateway_args=("--direct-drafts", "--fixed-k", "--no-verifier-ngram"),
        network_delay_ms=DELAY_MS,
    ) as stack:
        responses = generate(stack.gateway.address, greedy_request(PROMPTS[0], max_tokens=40))
        ahead = scrape(metrics_port)["splitspec_draft_ahead"]
        hits, misses = value(ahead, "_total", outcome="hit"), value(ahead, "_total", outcome="miss")
    assert token_ids(responses) == _plain(tiny_llama, 40)[0]
    rounds = responses[-1].speculation.num_rounds
    assert hits >= rounds - 3 and misses <= 1, (hits, misses, rounds)


@pytest.mark.e2e
def test_drafts_made_ahead_after_a_rejection_are_used_and_keep_the_output_exact(tiny_llama, tmp_path):
    """A slightly noisy copy of the target as draft model: its first draft is sometimes rejected, and
    then its next best guess is often the target's token, so the draft it made ahead for that outcome
    is used. Greedy output and seeded samples (drafted ahead too) are in-process output."""
    metrics_port = free_port()
    draft = write_perturbed_copy(tiny_llama, tmp_path / "draft", scale=0.05)
    with running_stack(
        tiny_llama,
        tmp_path,
        method="draft_model",
        k=3,
        draft_model=draft,
        verifier_args=("--metrics-port", str(metrics_port), "--draft-ahead-rejections", "1"),
        gateway_args=("--direct-drafts", "--fixed-k", "--no-verifier-ngram"),
        network_delay_ms=DELAY_MS,
    ) as stack:
        responses = generate_concurrently(stack.gateway.address, [greedy_request(p) for p in PROMPTS])
        ahead = scrape(metrics_port)["splitspec_draft_ahead"]
        counts = {o: value(ahead, "_total", outcome=o) for o in ("hit", "hit_after_rejection", "miss")}
        seeded = _seeded(stack.gateway.address)  # sparse q: the draws follow the draft model's, as in-process
    assert responses == _plain(tiny_llama)
    assert seeded == _seeded_in_process(tiny_llama, {"method": "draft_model", "model": str(draft)})
    assert counts["hit_after_rejection"] > 0 and counts["hit"] > 0, counts


@pytest.mark.e2e
def test_trees_fetched_by_the_verifier_are_verified_as_trees_and_keep_the_output_exact(tiny_llama, tmp_path):
    """--direct-drafts with --tree-width 3: the verifier asks the proposer for a draft model's trees
    (RemoteDraft.tree_width) and drafts ahead after each tree's main chain; greedy output is plain
    decoding's, seeded samples (siblings drawn from q) the in-process engine's with the same trees."""
    metrics_port = free_port()
    draft = write_perturbed_copy(tiny_llama, tmp_path / "draft", scale=0.1)
    with running_stack(
        tiny_llama,
        tmp_path,
        method="draft_model",
        k=6,
        draft_model=draft,
        verifier_args=("--metrics-port", str(metrics_port)),
        gateway_args=("--direct-drafts", "--fixed-k", "--no-verifier-ngram", "--tree-width", "3"),
    ) as stack:
        responses = generate_concurrently(stack.gateway.address, [greedy_request(p) for p in PROMPTS])
        seeded = _seeded(stack.gateway.address)
        scraped = scrape(metrics_port)
    assert responses == _plain(tiny_llama)
    spec = {"method": "draft_model", "model": str(draft), "num_speculative_tokens": 6, "tree_width": 3}
    assert seeded == _seeded_in_process(tiny_llama, {**spec, "adaptive": False})
    assert value(scraped["splitspec_verifier_tree_drafts"], "_total") > 0, "no fetched draft was a tree"
    ahead = scraped["splitspec_draft_ahead"]
    assert value(ahead, "_total", outcome="hit") + value(ahead, "_total", outcome="miss") > 0


@pytest.mark.e2e
def test_direct_drafts_cross_mutual_tls_between_verifier_and_proposer(tiny_llama, tmp_path):
    """The verifier calls the proposer as the gateway does: over TLS, presenting its client certificate."""
    certs = make_stack_certificates(tmp_path / "tls", [])
    args = ("--direct-drafts", "--fixed-k")
    with running_stack(tiny_llama, tmp_path, k=3, gateway_args=args, tls=certs) as stack:
        request = greedy_request(PROMPTS[3])
        responses = list(stream_generate(stack.gateway.address, request, 60, tls=ClientTls(str(certs.ca))))
    assert [t for r in responses for t in r.token_ids] == _plain(tiny_llama)[3]
    assert responses[-1].speculation.num_accepted_tokens > 0, "the proposer's drafts reached the verifier"


@contextmanager
def _streaming_on_two_proposers(tiny_llama, tmp_path, max_tokens: int):
    """A direct-drafts stack with two proposers, and PROMPTS streaming through it once the first proposer
    holds some of them; yields (stack, streams)."""
    args = ("--direct-drafts", "--fixed-k")
    with (
        running_stack(
            tiny_llama, tmp_path, k=3, num_proposers=2, gateway_args=args, network_delay_ms=DELAY_MS, metrics=True
        ) as stack,
        ExitStack() as cleanup,
    ):
        requests = [greedy_request(p, max_tokens=max_tokens) for p in PROMPTS]
        streams = all_streaming(stack.gateway.address, requests, cleanup)
        held = lambda: value(scrape(stack.proposers[0].metrics_port)["splitspec_proposer_sequences"])  # noqa: E731
        assert wait_for(lambda: held() > 0, timeout=10), "the first proposer drafts for some of the requests"
        yield stack, streams


def _went_on_without_it(stack, streams, step_away) -> tuple[int, float, float]:
    """step_away() (the first proposer's loss); then (streams running then, draft batches the other
    proposer answered afterwards, drafts accepted afterwards in the streams' rounds)."""
    survivor = stack.proposers[1].metrics_port
    step_away()
    running = sum(s.is_alive() for s in streams)
    received, served = [len(s.responses) for s in streams], drafts_served(survivor)
    join_all(streams)
    accepted = accepted_in(r for s, n in zip(streams, received) for r in s.responses[n:])
    return running, drafts_served(survivor) - served, accepted


@pytest.mark.e2e
def test_a_proposer_lost_under_direct_drafts_loses_nothing(tiny_llama, tmp_path):
    """Four long requests draft on two proposers; one is killed while it holds some of them. The verifier's
    draft calls to it fail, those steps verify no drafts, and the gateway moves the sequences to the other
    proposer, whose drafts are accepted from then on."""
    max_tokens = 240
    with _streaming_on_two_proposers(tiny_llama, tmp_path, max_tokens) as (stack, streams):
        running, served, accepted = _went_on_without_it(stack, streams, stack.proposers[0].proc.kill)
    assert [s.token_ids for s in streams] == _plain(tiny_llama, max_tokens)
    assert running > 0, "the proposer died under requests in flight"
    assert served > 0 and accepted > 0, ("the other proposer drafted, and its drafts were accepted", served, accepted)


@pytest.mark.e2e
def test_a_draining_proposer_under_direct_drafts_is_left_and_exits_while_requests_go_on(tiny_llama, tmp_path):
    """SIGTERM to one of two proposers while it holds sequences: it stops taking drafts, the gateway names
    the other in the next steps, the verifier releases the sequences on the first, which then holds none
    and exits before its grace period (5 s) is up, while the requests run on with nothing lost, drafted
    by the other."""
    max_tokens = 400
    exited_after = []

    def drain() -> None:
        draining = stack.proposers[0].proc
        draining.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert draining.wait(timeout=10) == 0
        exited_after.append(time.monotonic() - signalled)

    with _streaming_on_two_proposers(tiny_llama, tmp_path, max_tokens) as (stack, streams):
        still_running, served, accepted = _went_on_without_it(stack, streams, drain)
    assert [s.token_ids for s in streams] == _plain(tiny_llama, max_tokens)
    assert exited_after[0] < 4.0 and still_running > 0, (exited_after, still_running)
    assert served > 0 and accepted > 0, ("the other proposer drafted, and its drafts were accepted", served, accepted)


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("method", ["mlp_speculator"])
def test_direct_drafts_take_the_gateway_off_a_hidden_state_drafter_s_rounds(method, tiny_llama, tmp_path):
    """20 ms each way on every link. Through the gateway a hidden-state drafter's round crosses two links
    in series (verifier, then proposer: 80 ms); with direct drafts it crosses the verifier's link to the
    proposer (40 ms) while the steps behind it are already at the verifier."""
    drafter = _drafter(method, tiny_llama, None, tmp_path)
    seconds = {}
    for direct in (False, True):
        args = ("--fixed-k",) + (("--direct-drafts",) if direct else ())
        (tmp_path / str(direct)).mkdir()
        with running_stack(
            tiny_llama, tmp_path / str(direct), method=method, k=3, draft_model=drafter, gateway_args=args,
            network_delay_ms=20.0,
        ) as stack:  # fmt: skip
            generate(stack.gateway.address, greedy_request(PROMPTS[0], max_tokens=4))  # warm up
            started = time.monotonic()
            got = token_ids(generate(stack.gateway.address, greedy_request(PROMPTS[0], max_tokens=48)))
            seconds[direct] = time.monotonic() - started
        assert got == _plain(tiny_llama, 48)[0]
    assert seconds[True] <= 0.8 * seconds[False], seconds


def _verifier_service(tiny_llama):
    from splitspec.config import RunnerConfig
    from splitspec.models.loader import load_runner
    from splitspec.rpc.targets import parse_targets
    from verifier_svc.service import VerifierService

    runner = load_runner(tiny_llama, RunnerConfig(kv_cache_memory_bytes=1 << 20))
    return VerifierService(runner, proposers=parse_targets("127.0.0.1:1"))


def test_a_remote_draft_that_is_not_a_distribution_is_dropped_and_the_step_goes_on(tiny_llama):
    """The verifier checks what a proposer sends it as it checks what a gateway sends: a NaN q is no draft."""
    from splitspec.drafts import Draft
    from splitspec.sparse_distribution import SparseDistribution
    from verifier_svc.remote_drafts import RemoteDraftSpec, RemoteOutcome

    async def main():
        service = _verifier_service(tiny_llama)
        service.start()

        async def bent_draft(*args):
            q = SparseDistribution(torch.tensor([9, 10]), torch.tensor([float("nan"), 0.5], dtype=torch.float64))
            return RemoteOutcome(Draft([9], [q]), wait_s=0.001)

        service.remote.draft = bent_draft
        service.add("a", [5, 6, 7, 8], SamplingParams(temperature=0.8, max_tokens=None), seed=1)
        outcome = await service.step("a", 4, Draft(), remote=RemoteDraftSpec(1, "127.0.0.1:1"))
        await service.close()
        return outcome

    outcome = asyncio.run(main())
    assert outcome.proposer_failed and outcome.num_drafted == 0 and len(outcome.token_ids) == 1


@pytest.mark.parametrize(
    "spec, field_name",
    [
        (dict(proposer="no-port"), "remote_draft.proposer"),
        (dict(proposer="host:99999"), "remote_draft.proposer"),
        (dict(proposer="h" * 300 + ":1"), "remote_draft.proposer"),
        (dict(server_name="bad\tname"), "remote_draft.server_name"),
        (dict(timeout_s=0.0), "remote_draft.timeout_s"),
        (dict(timeout_s=float("nan")), "remote_draft.timeout_s"),
        (dict(timeout_s=61.0), "remote_draft.timeout_s"),
        (dict(num_tokens=129), "remote_draft.num_tokens"),
        (dict(tree_width=17), "remote_draft.tree_width"),
    ],
)
def test_a_malformed_remote_draft_is_refused_by_its_field(spec, field_name, tiny_llama):
    import grpc

    from splitspec.drafts import Draft
    from splitspec.errors import ServiceError
    from verifier_svc.remote_drafts import RemoteDraftSpec

    async def main():
        service = _verifier_service(tiny_llama)
        service.start()
        service.add("a", [5, 6, 7, 8], SamplingParams(temperature=0, max_tokens=None), seed=1)
        with pytest.raises(ServiceError) as refused:
            await service.step("a", 4, Draft(), remote=RemoteDraftSpec(**{"num_tokens": 2, "proposer": "p:1", **spec}))
        untouched = list(service.sequences["a"].tokens)
        await service.close()
        return refused.value, untouched

    refused, untouched = asyncio.run(main())
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT and refused.message.startswith(field_name)
    assert untouched == [5, 6, 7, 8]


class _ScriptedLinks:
    """ProposerLinks whose calls to the proposer are recorded and answered by `answer(assumed, excluded)`:
    the draft the proposer would make ahead for that outcome (a guess, then the next step's drafts)."""

    def __init__(self, ahead_rejections: int, answer) -> None:
        from splitspec.rpc.channels import Channels
        from verifier_svc.remote_drafts import ProposerLinks

        self.links = ProposerLinks(Channels([]), ahead_rejections)
        self.asked: list[tuple[list[int], list[int]]] = []

        async def call(link, seq_id, held, tokens, params, seed, spec, assumed=None, excluded=None):
            self.asked.append((list(assumed), list(excluded)))
            result = pb.DraftResult(committed_len=len(tokens))
            result.drafts.extend(pb.DraftToken(token_id=t) for t in answer(assumed, excluded)[: spec.num_tokens])
            return result

        self.links._call = call

    async def after(self, drafts: list[int], committed: list[int], skip_rejection_drafts: bool = False):
        """Draft ahead while `drafts` after BASE are verified, then take what the step committing
        `committed` finds."""
        from splitspec.drafts import HiddenStates
        from verifier_svc.remote_drafts import RemoteDraftSpec

        spec = RemoteDraftSpec(3, "127.0.0.1:1", skip_rejection_drafts=skip_rejection_drafts)
        params = SamplingParams(temperature=0, max_tokens=None)
        self.links.follow("s", spec, BASE, HiddenStates.NONE)
        self.links.draft_ahead("s", BASE, drafts, params, 0, spec)
        return await self.links.take_ahead("s", BASE + committed, 3)


BASE = [1, 2, 3]


def _guesses(assumed: list[int], excluded: list[int]) -> list[int]:
    """A proposer that guesses 13 after every draft accepted and 14 after the first rejected."""
    return [14 if excluded else 13, 50, 51, 52]


@pytest.mark.parametrize(
    "committed, taken, outcome",
    [
        ([10, 11, 12, 13], [50, 51, 52], "hit"),
        ([14], [50, 51, 52], "hit_after_rejection"),
        ([15], None, "miss"),  # the first draft rejected, but not for the token guessed
        ([10, 11, 12, 15], None, "miss"),
        ([10, 14], None, "miss"),  # the second draft rejected: no draft was made for that outcome
    ],
)
def test_the_verifier_takes_the_draft_made_ahead_for_the_outcome_that_came_and_no_other(committed, taken, outcome):
    scripted = _ScriptedLinks(1, _guesses)
    found = asyncio.run(scripted.after([10, 11, 12], committed))
    assert scripted.asked == [([10, 11, 12], []), ([], [10])], "every draft accepted, then the first rejected"
    assert (found.draft.token_ids if found else None) == taken
    assert scripted.links.ahead_outcomes[outcome] == 1 and sum(scripted.links.ahead_outcomes.values()) == 1


def test_the_verifier_drafts_ahead_for_as_many_rejections_as_it_is_told():
    for rejections, outcomes in [(0, [3]), (2, [3, 0, 1]), (5, [3, 0, 1, 2])]:
        scripted = _ScriptedLinks(rejections, _guesses)
        asyncio.run(scripted.after([10, 11, 12], [10, 11, 12, 13]))
        assert [len(assumed) for assumed, _ in scripted.asked] == outcomes
        assert all(excluded == [10, 11, 12][len(assumed) : len(assumed) + 1] for assumed, excluded in scripted.asked)


def test_a_proposer_with_no_other_guess_after_a_rejection_is_asked_only_for_every_draft_accepted():
    """Its drafter reports drafts_after_rejection false (suffix), and the gateway's remote drafts say so."""
    scripted = _ScriptedLinks(2, _guesses)
    asyncio.run(scripted.after([10, 11, 12], [10, 11, 12, 13], skip_rejection_drafts=True))
    assert scripted.asked == [([10, 11, 12], [])]


@pytest.mark.parametrize("guess_after_rejection, most_asked", [(14, 64), (15, 20)])
def test_drafts_ahead_for_a_rejection_are_asked_for_while_their_guesses_are_used(guess_after_rejection, most_asked):
    """Every step rejects the first draft for 14. A proposer that guesses 15 there is asked for such
    drafts until its guesses are seen to be wrong, then only on every 16th step, to notice a change."""
    from verifier_svc.remote_drafts import REJECTION_PROBE_EVERY

    def answer(assumed, excluded):
        return [guess_after_rejection if excluded else 13, 50, 51, 52]

    async def steps() -> list[bool]:
        scripted = _ScriptedLinks(1, answer)
        asked_after_rejection = []
        for _ in range(64):
            before = sum(1 for _, excluded in scripted.asked if excluded)
            await scripted.after([10, 11, 12], [14])  # awaits the draft for the rejection, if asked for
            asked_after_rejection.append(sum(1 for _, excluded in scripted.asked if excluded) > before)
        return asked_after_rejection

    asked = asyncio.run(steps())
    assert most_asked - 4 <= sum(asked) <= most_asked
    if guess_after_rejection == 15:
        assert all(asked[:10]) and not all(asked[-REJECTION_PROBE_EVERY:]) and any(asked[-REJECTION_PROBE_EVERY:])
