"""The `splitspec` command reports user mistakes as one clear line and exit status 2, never a traceback."""

from __future__ import annotations

import time

import pytest
from cli_run import assert_one_line_error, splitspec


@pytest.mark.e2e
def test_nonexistent_model_directory(tmp_path):
    missing = tmp_path / "no-such-checkpoint"
    assert_one_line_error(
        splitspec("generate", "hi", "--model", str(missing)), str(missing), "not a checkpoint directory"
    )


@pytest.mark.e2e
def test_directory_without_config_json(tmp_path):
    assert_one_line_error(splitspec("generate", "hi", "--model", str(tmp_path)), "has no config.json")


@pytest.mark.e2e
def test_unreachable_hub_id_says_how_to_download_it():
    result = splitspec("generate", "hi", "--model", "some-org/some-model")
    assert_one_line_error(result, "could not fetch 'some-org/some-model'", "huggingface-cli download")


def test_unreachable_hub_id_fails_fast():
    """Measured in this process, so the interpreter's and torch's start-up (seconds under load) do not
    count: only the hub lookup, which must give up instead of retrying for long."""
    from splitspec.checkpoint import resolve_checkpoint
    from splitspec.errors import SplitspecError

    start = time.monotonic()
    with pytest.raises(SplitspecError, match="could not fetch"):
        resolve_checkpoint("some-org/some-model")
    assert time.monotonic() - start < 10


@pytest.mark.e2e
@pytest.mark.parametrize(
    "flags, message",
    [
        (["--temperature", "-1"], "temperature must be a number >= 0, got -1.0"),
        (["-k", "0"], "--num-speculative-tokens must be at least 1"),
        (["--method", "draft_model"], "--method draft_model needs --draft-model DIR"),
        (["--max-tokens", "0"], "--max-tokens must be at least 1"),
        (["--method", "suffix", "--suffix-min-token-prob", "2"], "--suffix-min-token-prob must be in [0, 1], got 2.0"),
    ],
)
def test_bad_generation_flags(tiny_llama, flags, message):
    assert_one_line_error(splitspec("generate", "hi", "--model", str(tiny_llama), *flags), message)


@pytest.mark.parametrize(
    "command, message",
    [
        (["bench", "--network-delay-ms", "1,x"], "--network-delay-ms takes comma-separated milliseconds"),
        (["bench", "--network-delay-ms", "-1"], "--network-delay-ms needs delays >= 0, got '-1'"),
        (["bench", "--request-rate", "1,x"], "--request-rate takes comma-separated positive numbers"),
        (["bench", "--request-rate", "0"], "--request-rate takes positive numbers, got '0'"),
        (["bench", "--concurrency", "-4"], "--concurrency takes positive numbers, got '-4'"),
        (["bench", "--num-requests", "0"], "--num-requests must be >= 1, got 0"),
        (["up", "--network-delay-ms", "-2"], "--network-delay-ms must be >= 0, got -2.0"),
        (
            ["serve-gateway", "--prompt-lookup-min", "5", "--prompt-lookup-max", "2"],
            "need 1 <= prompt_lookup_min <= prompt_lookup_max <= 64, got min=5, max=2",
        ),
        (["serve-gateway", "--max-tokens-limit", "0"], "--max-tokens-limit must be at least 1, got 0"),
    ],
)
def test_bad_network_flags(command, message):
    assert_one_line_error(splitspec(*command), message)


@pytest.mark.e2e
def test_text_prompt_for_a_checkpoint_without_tokenizer(tiny_llama):
    assert_one_line_error(
        splitspec("generate", "hi", "--model", str(tiny_llama), "--method", "none"), "has no tokenizer files"
    )


def test_up_passes_every_proposer_flag_on_to_the_proposer():
    from splitspec.entrypoints.cli import build_parser
    from splitspec.entrypoints.cli_services import up_commands

    flags = ["--prompt-lookup-max", "7", "--prompt-lookup-min", "2", "--draft-top-k", "3"]
    flags += ["--suffix-max-tree-depth", "32", "--suffix-max-cached-requests", "5"]
    flags += ["--suffix-max-spec-factor", "1.5", "--suffix-min-token-prob", "0.25"]
    proposer = up_commands(build_parser().parse_args(["up", *flags]))["proposer"]
    served = build_parser().parse_args(proposer[proposer.index("serve-proposer") :])
    assert (served.prompt_lookup_max, served.prompt_lookup_min, served.draft_top_k) == (7, 2, 3)
    assert (served.suffix_max_tree_depth, served.suffix_max_cached_requests) == (32, 5)
    assert (served.suffix_max_spec_factor, served.suffix_min_token_prob) == (1.5, 0.25)


@pytest.mark.parametrize(
    "flags, expected",
    [
        ([], (False, True, True, False)),
        (["--ngram-on-proposers", "--no-draft-ahead", "--no-pipeline", "--direct-drafts"], (True, False, False, True)),
    ],
)
def test_up_passes_the_gateways_round_trip_flags_on(flags, expected):
    from splitspec.entrypoints.cli import build_parser
    from splitspec.entrypoints.cli_services import up_commands

    gateway = up_commands(build_parser().parse_args(["up", *flags]))["gateway"]
    served = build_parser().parse_args(gateway[gateway.index("serve-gateway") :])
    assert (served.ngram_on_proposers, served.draft_ahead, served.pipeline, served.direct_drafts) == expected


def test_up_tls_dir_gives_the_verifier_a_client_certificate_for_the_proposers(tmp_path):
    from splitspec.entrypoints.cli import build_parser
    from splitspec.entrypoints.cli_services import up_commands
    from splitspec.rpc.throwaway_certs import make_stack_certificates

    certs = make_stack_certificates(tmp_path, [])
    verifier = up_commands(build_parser().parse_args(["up"]), certs=certs)["verifier"]
    served = build_parser().parse_args(verifier[verifier.index("serve-verifier") :])
    assert (served.tls_client_cert_file, served.tls_client_key_file) == (str(certs.client_cert), str(certs.client_key))


@pytest.mark.parametrize("flags, http_port", [([], None), (["--http-port", "8000"], 8000)])
def test_up_serves_http_only_when_asked(flags, http_port):
    from splitspec.entrypoints.cli import build_parser
    from splitspec.entrypoints.cli_services import up_commands

    gateway = up_commands(build_parser().parse_args(["up", *flags]))["gateway"]
    assert build_parser().parse_args(gateway[gateway.index("serve-gateway") :]).http_port == http_port


def test_up_metrics_port_gives_the_gateway_p_the_verifier_p_plus_1_and_the_proposer_p_plus_2():
    from splitspec.entrypoints.cli import build_parser
    from splitspec.entrypoints.cli_services import up_commands

    commands = up_commands(build_parser().parse_args(["up", "--metrics-port", "9400"]))
    served = {name: build_parser().parse_args(cmd[cmd.index(f"serve-{name}") :]) for name, cmd in commands.items()}
    assert {name: args.metrics_port for name, args in served.items()} == {
        "gateway": 9400,
        "verifier": 9401,
        "proposer": 9402,
    }
    plain = up_commands(build_parser().parse_args(["up"]))
    assert not any("--metrics-port" in cmd for cmd in plain.values())


@pytest.mark.e2e
@pytest.mark.parametrize("command", ["serve-verifier", "serve-proposer", "serve-gateway"])
def test_a_bad_environment_value_is_reported_like_a_bad_flag(command):
    result = splitspec(command, env={"SPLITSPEC_PORT": "abc", "SPLITSPEC_GRACE_SECONDS": "soon"})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        result.stderr.strip().splitlines()[-1]
        == f"splitspec {command}: error: argument --port: invalid int value: 'abc'"
    )


@pytest.mark.e2e
def test_a_bad_environment_value_for_a_service_leaves_other_subcommands_alone(tmp_path):
    missing = tmp_path / "no-such-checkpoint"
    result = splitspec("generate", "hi", "--model", str(missing), env={"SPLITSPEC_PORT": "abc"})
    assert_one_line_error(result, "is not a checkpoint directory")


def test_environment_values_become_typed_defaults(monkeypatch):
    from splitspec.entrypoints.cli import build_parser

    monkeypatch.setenv("SPLITSPEC_PORT", "6123")
    monkeypatch.setenv("SPLITSPEC_BATCH_WINDOW_MS", "0.5")
    args = build_parser().parse_args(["serve-verifier"])
    assert (args.port, args.batch_window_ms) == (6123, 0.5)


def test_up_with_a_speculators_head_as_the_model_serves_the_target_it_names(tmp_path, tiny_llama_8_layers):
    from eagle3_heads import write_eagle3

    from splitspec.entrypoints.cli import build_parser
    from splitspec.entrypoints.cli_services import up_commands
    from splitspec.errors import SplitspecError

    head = write_eagle3(tmp_path / "head", tiny_llama_8_layers, layout="speculators", speculative_tokens=5)
    beside = up_commands(build_parser().parse_args(["up", "--model", str(head)]))
    served = {name: build_parser().parse_args(c[c.index(f"serve-{name}") :]) for name, c in beside.items()}
    assert set(served) == {"verifier", "gateway"}, "the head drafts in the verifier: no proposer"
    assert served["verifier"].model == served["gateway"].model == str(tiny_llama_8_layers)
    assert served["verifier"].speculative_config == {
        "method": "eagle3",
        "model": str(head),
        "num_speculative_tokens": 5,
    }
    assert served["verifier"].proposers == served["gateway"].proposers == ()
    assert (served["gateway"].method, served["gateway"].num_speculative_tokens) == ("eagle3", 5)

    on_proposer = up_commands(build_parser().parse_args(["up", "--model", str(head), "--speculator-on", "proposer"]))
    served = {name: build_parser().parse_args(c[c.index(f"serve-{name}") :]) for name, c in on_proposer.items()}
    assert served["verifier"].speculative_config is None
    proposer = served["proposer"]
    assert (proposer.method, proposer.draft_model, proposer.target_model) == (
        "eagle3",
        str(head),
        str(tiny_llama_8_layers),
    )
    assert proposer.num_speculative_tokens == 5
    with pytest.raises(SplitspecError, match="names its target"):
        up_commands(build_parser().parse_args(["up", "--model", str(head), "--method", "suffix"]))


@pytest.mark.parametrize(
    "config, fragment",
    [
        ('{"model": "[ngram]", "num_speculative_tokens": 3}', "reads the target's hidden states"),
        ('{"model": "/nonexistent/head", "method": "eagle3", "num_speculative_tokens": 3}', "/nonexistent/head"),
        ('{"num_speculative_tokens": 3}', 'needs "model"'),
    ],
)
def test_serve_verifier_refuses_a_speculator_it_cannot_draft_with_in_one_line(tiny_llama_8_layers, config, fragment):
    result = splitspec("serve-verifier", "--model", str(tiny_llama_8_layers), "--speculative-config", config)
    assert_one_line_error(result, fragment)
