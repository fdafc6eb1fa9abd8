"""Scaling out with nothing lost: pods found by name and dropped from it, gateways sharing pods, and a
proposer drained mid-stream. Every pod runs on its own host (`hosts`); names resolve through each
host's own /etc/hosts, which the tests edit, the resolver path a Kubernetes headless Service takes."""

from __future__ import annotations

import signal
import time
from contextlib import ExitStack

import pytest
from host_pods import (
    METRICS_PORT,
    PROPOSER_PORT,
    VERIFIER_PORT,
    addresses,
    gateway_on_host,
    proposers_on_hosts,
    verifiers_on_hosts,
)
from metrics_scrape import accepted_in, drafts_served, scrape, value
from pod_streams import (
    PROMPTS,
    all_streaming,
    assert_lossless,
    greedy_and_seeded_requests,
    in_process_outputs,
    join_all,
    num_sequences,
)
from service_stack import wait_for
from tiny_checkpoints import write_tiny_checkpoint

from splitspec.entrypoints.client import build_request

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
LONG_TOKENS = 1200


def _ip(service) -> str:
    return service.address.rsplit(":", 1)[0]


def _reported(gateway, verifier) -> float | None:
    """The sequences the gateway last heard the verifier report; None while it has not heard it serve."""
    family = scrape(METRICS_PORT, _ip(gateway)).get("splitspec_verifier_reported_sequences")
    samples = [s.value for s in family.samples if s.labels["verifier"] == verifier.address] if family else []
    return samples[0] if samples else None


@pytest.fixture(scope="module")
def long_context_llama(tmp_path_factory):
    """The tiny target with room for streams that last seconds."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("long_llama"), "llama", seed=0, max_position_embeddings=4096)


def test_pods_named_in_dns_join_when_listed_and_drain_when_unlisted(long_context_llama, hosts, tmp_path):
    """The gateway knows the verifiers only as dns:///verifiers. A second verifier added to the name
    takes the next requests; the first, removed from it, is drained: its sequences move while they
    run, and every stream ends with the in-process tokens."""
    model = long_context_llama
    # the first four run long, so that the first verifier still holds them when the next four arrive
    long_expected = in_process_outputs(model, LONG_TOKENS)[:4]
    expected = in_process_outputs(model)[4:]
    requests = greedy_and_seeded_requests(LONG_TOKENS, num_speculative_tokens=0)[:4]
    requests += greedy_and_seeded_requests(num_speculative_tokens=0)[4:]
    with ExitStack() as cleanup:
        first, second = verifiers_on_hosts(model, hosts, tmp_path, cleanup, 2)
        (proposer,) = proposers_on_hosts(hosts, tmp_path, cleanup, 1)
        gateway_host = hosts.add("gateway")
        gateway_host.write_hosts({"verifiers": [_ip(first)], "proposers": [_ip(proposer)]})
        # placement by load alone: with prefix routing, a prompt with a whole block may go to the busier
        # verifier while it is within the routing's load slack (4 of 64 slots is)
        gateway = gateway_on_host(
            model, gateway_host, tmp_path, cleanup, f"dns:///verifiers:{VERIFIER_PORT}",
            f"dns:///proposers:{PROPOSER_PORT}", "--resolve-interval-s", "0.2", "--metrics-port", str(METRICS_PORT),
            "--no-prefix-routing",
        )  # fmt: skip
        before = all_streaming(gateway.address, requests[:4], cleanup)
        assert num_sequences(first.address) == 4 and num_sequences(second.address) == 0

        gateway_host.write_hosts({"verifiers": [_ip(first), _ip(second)], "proposers": [_ip(proposer)]})
        assert wait_for(lambda: f"verifier {second.address} joined" in gateway.logs(), timeout=10)
        # the gateway places on a verifier once a check heard it serve (every 1 s)
        assert wait_for(lambda: _reported(gateway, second) == 0, timeout=10)
        after = all_streaming(gateway.address, requests[4:], cleanup)
        on_second = num_sequences(second.address)
        before_were_running = all(s.is_alive() for s in before)

        gateway_host.write_hosts({"verifiers": [_ip(second)], "proposers": [_ip(proposer)]})
        drained = wait_for(lambda: num_sequences(first.address) == 0, timeout=10)
        still_running = sum(s.is_alive() for s in before + after)
        join_all(before + after)
    assert before_were_running, "the first streams ended before the verifier joined: nothing to weigh load by"
    assert on_second == 4, "the verifier that joined took the new requests (it had the least load)"
    assert drained, "the verifier removed from the name still holds sequences"
    assert still_running > 0, "the streams were still running when the removed verifier emptied"
    assert "verifier" in gateway.logs() and "left; draining it" in gateway.logs()
    assert_lossless(model, before + after, long_expected + expected)


def test_two_gateways_share_verifiers_by_the_load_they_report(long_context_llama, hosts, tmp_path):
    """Gateway A's first request goes to one verifier; gateway B, which has started nothing, sends its
    first to the other, because it reads the load A put there. Then both serve greedy and seeded
    streams at once, all equal to in-process."""
    model = long_context_llama
    expected = in_process_outputs(model)
    requests = greedy_and_seeded_requests()
    with ExitStack() as cleanup:
        verifiers = verifiers_on_hosts(model, hosts, tmp_path, cleanup, 2)
        proposers = proposers_on_hosts(hosts, tmp_path, cleanup, 2)
        pods = (addresses(verifiers), addresses(proposers), "--metrics-port", str(METRICS_PORT))
        a, b = (gateway_on_host(model, hosts.add(name), tmp_path, cleanup, *pods) for name in ("a", "b"))
        long = build_request(PROMPTS[1], temperature=0, max_tokens=1200, ignore_eos=True, num_speculative_tokens=0)
        first_on_a = all_streaming(a.address, [long], cleanup)
        (holding,) = (v for v in verifiers if num_sequences(v.address) == 1)
        # B's check of the verifiers (every 1 s) reads the load A put there
        assert wait_for(lambda: _reported(b, holding) == 1, timeout=10)
        first_on_b = all_streaming(b.address, [long], cleanup)
        spread = [num_sequences(v.address) for v in verifiers]
        a_was_running = first_on_a[0].is_alive()
        streams = all_streaming(a.address, requests[::2], cleanup) + all_streaming(b.address, requests[1::2], cleanup)
        join_all(first_on_a + first_on_b + streams)
    assert a_was_running, "A's first stream ended before B started one: nothing to read the load of"
    assert spread == [1, 1], f"sequences per verifier after one request on each gateway: {spread}"
    assert first_on_a[0].token_ids == first_on_b[0].token_ids
    assert_lossless(model, streams, expected[::2] + expected[1::2])


def test_sigterm_moves_a_proposer_s_sequences_and_it_exits_once_empty(tiny_llama, hosts, tmp_path):
    """Draining a proposer: health NOT_SERVING, the gateway drafts each of its sequences on the other
    proposer from the next round (sending it the whole context), and it exits long before its grace
    period; no stream notices. Its metrics show it held sequences when signalled; after it exited the
    other proposer drafted, and the streams' rounds accepted drafts."""
    expected = in_process_outputs(tiny_llama)
    metrics = ("--metrics-port", str(METRICS_PORT))
    with ExitStack() as cleanup:
        (verifier,) = verifiers_on_hosts(tiny_llama, hosts, tmp_path, cleanup, 1)
        proposers = proposers_on_hosts(hosts, tmp_path, cleanup, 2, 120, *metrics)
        # a fixed K: adaptive K stops drafting on this tiny model within a few rounds, and then no round
        # would show where its drafts come from
        gateway = gateway_on_host(
            tiny_llama, hosts.add("gateway"), tmp_path, cleanup, verifier.address, addresses(proposers), "--fixed-k"
        )
        streams = all_streaming(gateway.address, greedy_and_seeded_requests(), cleanup)
        held = value(scrape(METRICS_PORT, _ip(proposers[0]))["splitspec_proposer_sequences"])
        started = time.monotonic()
        proposers[0].proc.send_signal(signal.SIGTERM)
        assert proposers[0].proc.wait(timeout=60) == 0
        drained_after = time.monotonic() - started
        still_running = sum(s.is_alive() for s in streams)
        received_at_exit = [len(s.responses) for s in streams]
        served_at_exit = drafts_served(METRICS_PORT, _ip(proposers[1]))
        join_all(streams)
        served_after_exit = drafts_served(METRICS_PORT, _ip(proposers[1])) - served_at_exit
        accepted_after_exit = accepted_in(r for s, n in zip(streams, received_at_exit) for r in s.responses[n:])
    assert held > 0, "the drained proposer held sequences when it was signalled"
    assert drained_after < 30, f"exited {drained_after:.1f} s after SIGTERM; its grace period is 120 s"
    assert still_running > 0, "streams were still running when it exited: they had moved"
    assert served_after_exit > 0 and accepted_after_exit > 0, "drafting went on, on the other proposer"
    assert "drained" in proposers[0].logs()
    assert_lossless(tiny_llama, streams, expected)
