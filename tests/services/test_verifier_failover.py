"""Losing a verifier loses no token: the gateway restarts each affected sequence on another verifier
from the committed history it holds, and the client sees one uninterrupted stream.

Every pod runs on its own host (a network namespace with its own address, `hosts`), so the gateway
reaches the verifiers over real interfaces, and a verifier can be cut off by unplugging its link.
"""

from __future__ import annotations

import json
import signal
import time
from contextlib import ExitStack

import pytest
from host_pods import addresses, gateway_on_host, proposers_on_hosts, verifiers_on_hosts
from pod_streams import (
    MAX_TOKENS,
    all_streaming,
    assert_lossless,
    greedy_and_seeded_requests,
    in_process_outputs,
    join_all,
    num_sequences,
)
from service_stack import start_service

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

KEEPALIVE = ["--keepalive-time-ms", "1000", "--keepalive-timeout-ms", "2000"]


def _two_verifier_stack(model, hosts, log_dir, cleanup: ExitStack, grace_seconds: float = 5, gateway_args=()):
    verifiers = verifiers_on_hosts(model, hosts, log_dir, cleanup, 2, grace_seconds)
    proposers = proposers_on_hosts(hosts, log_dir, cleanup, 1)
    gateway = gateway_on_host(
        model, hosts.add("gateway"), log_dir, cleanup, addresses(verifiers), addresses(proposers), *gateway_args
    )
    return verifiers, gateway


def _kill_the_first_mid_stream(verifiers, gateway, cleanup: ExitStack) -> list:
    """Greedy and seeded streams through the gateway; the first verifier is SIGKILLed while it serves some
    and every stream is mid-way. Returns the streams, read to their end."""
    streams = all_streaming(gateway.address, greedy_and_seeded_requests(), cleanup)
    on_victim = num_sequences(verifiers[0].address)
    verifiers[0].stop(signal.SIGKILL)
    # read once the victim is dead: a count below the end was reached while it lived, counts only grow
    received_at_death = [len(s.token_ids) for s in streams]
    join_all(streams)
    assert on_victim > 0, "the killed verifier was serving some of the streams"
    assert all(0 < n < MAX_TOKENS for n in received_at_death), f"not every stream was mid-way: {received_at_death}"
    return streams


def test_killing_a_verifier_mid_stream_loses_no_token(tiny_llama, hosts, tmp_path):
    """Eight streams, greedy and seeded sampling, spread over two verifiers; one is SIGKILLed while
    all are running. Every stream completes with the tokens an uninterrupted in-process run gives."""
    expected = in_process_outputs(tiny_llama)
    with ExitStack() as cleanup:
        verifiers, gateway = _two_verifier_stack(tiny_llama, hosts, tmp_path, cleanup)
        streams = _kill_the_first_mid_stream(verifiers, gateway, cleanup)
    assert_lossless(tiny_llama, streams, expected)


def test_killing_a_verifier_that_drafts_beside_its_target_loses_no_token(
    tiny_llama_8_layers, eagle3_head, hosts, tmp_path
):
    """Both verifiers hold an EAGLE-3 head beside their target (no proposer). One is SIGKILLed with
    streams on it: they move to the other, whose head has none of their states (the move re-prefills
    them, and its head gets every row), and every stream completes with the target's own tokens."""
    model = tiny_llama_8_layers
    expected = in_process_outputs(model)
    config = json.dumps({"model": str(eagle3_head), "num_speculative_tokens": 3})
    with ExitStack() as cleanup:
        verifiers = verifiers_on_hosts(model, hosts, tmp_path, cleanup, 2, 5, "--speculative-config", config)
        gateway = start_service(
            "gateway", ["serve-gateway", "--model", str(model), "--verifiers", addresses(verifiers), "--method",
                        "eagle3", "-k", "3"], tmp_path, on=hosts.add("gateway"),
        )  # fmt: skip
        cleanup.callback(gateway.stop)
        streams = _kill_the_first_mid_stream(verifiers, gateway, cleanup)
    assert_lossless(model, streams, expected)
    assert sum(s.responses[-1].speculation.num_draft_tokens for s in streams) > 0, "the heads drafted"


def test_a_verifier_cut_off_from_the_network_is_left_within_the_keepalive_timeout(tiny_llama, hosts, tmp_path):
    """Its link goes down mid-stream: no error reaches the gateway, only silence. Keepalive pings
    (1 s, 2 s timeout) show it is gone; its sequences move and complete, identical to in-process."""
    expected = in_process_outputs(tiny_llama)
    with ExitStack() as cleanup:
        verifiers, gateway = _two_verifier_stack(tiny_llama, hosts, tmp_path, cleanup, gateway_args=KEEPALIVE)
        streams = all_streaming(gateway.address, greedy_and_seeded_requests(), cleanup)
        on_cut = num_sequences(verifiers[0].address)
        received = [len(s.responses) for s in streams]
        cut_at = time.monotonic()
        hosts.hosts[0].set_link(up=False)
        resumed_after = []
        for s, n in zip(streams, received):
            deadline = cut_at + 30
            while len(s.responses) <= n + 1 and s.is_alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            resumed_after.append(time.monotonic() - cut_at)
        join_all(streams)
    assert on_cut > 0, "the cut-off verifier was serving some of the streams"
    assert max(resumed_after) < 15, f"streams resumed {max(resumed_after):.1f} s after the cut"
    assert_lossless(tiny_llama, streams, expected)


def test_sigterm_moves_a_verifier_s_sequences_and_it_exits_once_empty(tiny_llama, hosts, tmp_path):
    """Draining: health NOT_SERVING, the gateway moves each sequence at its next round, and the verifier
    exits as soon as it holds none, long before its grace period; no stream notices."""
    expected = in_process_outputs(tiny_llama)
    with ExitStack() as cleanup:
        verifiers, gateway = _two_verifier_stack(tiny_llama, hosts, tmp_path, cleanup, grace_seconds=120)
        streams = all_streaming(gateway.address, greedy_and_seeded_requests(), cleanup)
        on_drained = num_sequences(verifiers[0].address)
        started = time.monotonic()
        verifiers[0].proc.send_signal(signal.SIGTERM)
        assert verifiers[0].proc.wait(timeout=60) == 0
        drained_after = time.monotonic() - started
        still_running = sum(s.is_alive() for s in streams)
        join_all(streams)
    assert on_drained > 0, "the drained verifier was serving some of the streams"
    assert drained_after < 30, f"exited {drained_after:.1f} s after SIGTERM; its grace period is 120 s"
    assert still_running > 0, "streams were still running when it exited: they had moved"
    assert "drained" in verifiers[0].logs()
    assert_lossless(tiny_llama, streams, expected)
