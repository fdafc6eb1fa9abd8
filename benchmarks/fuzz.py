"""Fuzz the services over their protobuf messages: every input gets an answer or a status with a message.

Usage: python benchmarks/fuzz.py [--model default] [--seconds 60] [--targets verifier,proposer,gateway]
           [--seed 0]

Starts a verifier, an n-gram proposer and a gateway (`--max-tokens-limit 16`) as separate processes on
loopback, and for `--seconds` each sends them messages that hypothesis draws from the message
descriptors: every field present or not, each oneof's member at random, integers and floats at their
extremes (NaN, infinities, negative ids, lengths past the context), text of any Unicode, and sequence
ids drawn mostly from a few names so that starts, steps and releases of one sequence meet. An example
is one request to the gateway, or a short session of requests on one Verify or Propose stream, which
then ends (the server frees what the session started).

A crash is: a server process that exits, a stream that breaks, a call with no answer within 30 s, an
answer INTERNAL or UNKNOWN (an error the server did not expect), or an error without a message. After
each target's run its health must still be SERVING, the verifier must hold no sequence and every KV
block must be free, and the target's resident memory may not grow more than `--max-memory-growth`
(10%) over its level after the first examples. Prints one line per target and exits non-zero on any
crash.
"""

from __future__ import annotations

import argparse
import queue
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.struct_pb2 import Struct
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from pods import Pod, start_ngram_stack

from splitspec_protos import splitspec_v1_pb2 as pb
from splitspec_protos import splitspec_v1_pb2_grpc as pb_grpc

ANSWER_TIMEOUT_S = 30.0
UNEXPECTED = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
SEQ_IDS = ["a", "b"]

INT32 = st.one_of(st.integers(-3, 300), st.integers(-(2**31), 2**31 - 1))
UINT32 = st.one_of(st.integers(0, 300), st.integers(0, 2**32 - 1))
UINT64 = st.one_of(st.integers(0, 300), st.integers(0, 2**64 - 1))
INT64 = st.one_of(st.integers(-3, 300), st.integers(-(2**63), 2**63 - 1))
DOUBLE = st.one_of(st.floats(-2, 2), st.floats(allow_nan=True, allow_infinity=True))
FLOAT = st.one_of(st.floats(0, 1, width=32), st.floats(allow_nan=True, allow_infinity=True, width=32))
TEXT = st.one_of(st.text(max_size=12), st.text(max_size=300), st.integers(129, 5000).map(lambda n: "x" * n))


def _scalar(field: FieldDescriptor) -> st.SearchStrategy:
    t = field.type
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == FieldDescriptor.TYPE_STRING:
        return TEXT
    if t == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if t == FieldDescriptor.TYPE_DOUBLE:
        return DOUBLE
    if t == FieldDescriptor.TYPE_FLOAT:
        return FLOAT
    if t == FieldDescriptor.TYPE_ENUM:
        return st.sampled_from([v.number for v in field.enum_type.values])
    if t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return UINT32
    if t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return UINT64
    if t in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64):
        return INT64
    return INT32


@st.composite
def structs(draw) -> Struct:
    """A Struct of a few keys, the known override among them now and then."""
    keys = st.one_of(st.just("num_speculative_tokens"), st.text(max_size=8))
    values = st.one_of(st.integers(-5, 50), DOUBLE, st.text(max_size=8), st.booleans(), st.none())
    struct = Struct()
    struct.update(draw(st.dictionaries(keys, values, max_size=3)))
    return struct


@dataclass
class Overrides:
    """Strategies for fields (by full name) whose values matter more than their types say."""

    by_field: dict[str, st.SearchStrategy] = field(default_factory=dict)

    def get(self, field: FieldDescriptor) -> st.SearchStrategy | None:
        return self.by_field.get(field.full_name)


@st.composite
def messages(draw, cls: type[Message], overrides: Overrides, depth: int = 0) -> Message:
    """Any message of `cls`: each field set or not, one member of each oneof or none."""
    message = cls()
    descriptor = cls.DESCRIPTOR
    # a oneof left empty now and then; a field the overrides care about set nine times in ten
    chosen = {o.name: draw(st.sampled_from([None, *[f.name for f in o.fields] * 4])) for o in descriptor.oneofs}
    for f in descriptor.fields:
        override = overrides.get(f)
        if f.containing_oneof is not None:
            if chosen[f.containing_oneof.name] != f.name:
                continue
        elif not draw(st.booleans() if override is None else st.integers(0, 9).map(bool)):
            continue
        if f.message_type is not None and f.message_type.full_name == "google.protobuf.Struct":
            getattr(message, f.name).CopyFrom(draw(structs()))
        elif f.message_type is not None and f.message_type.GetOptions().map_entry:
            key, value = (f.message_type.fields_by_name[name] for name in ("key", "value"))
            getattr(message, f.name).update(draw(st.dictionaries(_scalar(key), _scalar(value), max_size=6)))
        elif f.message_type is not None:
            if depth >= 4:
                continue
            nested = st.deferred(lambda f=f: messages(f.message_type._concrete_class, overrides, depth + 1))
            if f.is_repeated:
                for item in draw(st.lists(nested, max_size=6)):
                    getattr(message, f.name).add().CopyFrom(item)
            elif f.containing_oneof is not None or draw(st.booleans()):
                getattr(message, f.name).CopyFrom(draw(nested))
            else:
                getattr(message, f.name).SetInParent()
        elif f.is_repeated:
            items = override if override is not None else _scalar(f)
            getattr(message, f.name).extend(draw(st.lists(items, min_size=override is not None, max_size=24)))
        else:
            setattr(message, f.name, draw(override if override is not None else _scalar(f)))
    return message


@st.composite
def _starts(draw, overrides: Overrides) -> pb.VerifierRequest:
    """A start for one of the usual sequence ids: what a session's steps can then build on."""
    request = pb.VerifierRequest(seq_id=draw(st.sampled_from(SEQ_IDS)))
    request.start.CopyFrom(draw(messages(pb.StartSequence, overrides)))
    return request


def mostly(usual: st.SearchStrategy, wild: st.SearchStrategy, odds: int = 20) -> st.SearchStrategy:
    """`usual` but one time in `odds`: values that pass the first checks often enough to reach the
    deeper ones, a list of them mostly without a wild element."""
    return st.integers(0, odds - 1).flatmap(lambda n: wild if n == 0 else usual)


def _overrides(vocab_size: int, max_model_len: int) -> Overrides:
    token = mostly(st.integers(0, min(vocab_size, 300) - 1), st.one_of(st.integers(-2, vocab_size + 2), INT32))
    length = mostly(st.integers(0, 12), st.one_of(st.integers(max_model_len - 2, max_model_len + 2), UINT32), 5)
    probability = mostly(st.one_of(st.floats(0, 1), st.just(1.0)), DOUBLE)
    seq_id = mostly(st.sampled_from(SEQ_IDS), TEXT, 10)
    temperature = mostly(st.one_of(st.just(0.0), st.floats(0, 2)), DOUBLE, 5)
    names = {
        "splitspec.v1.VerifierRequest.seq_id": seq_id,
        "splitspec.v1.ProposerRequest.seq_id": seq_id,
        "splitspec.v1.StartSequence.token_ids": token,
        "splitspec.v1.StartSequence.temperature": temperature,
        "splitspec.v1.StartSequence.top_p": mostly(st.one_of(st.just(1.0), st.floats(0, 1)), DOUBLE, 5),
        "splitspec.v1.DraftStep.temperature": temperature,
        "splitspec.v1.VerifyStep.committed_len": length,
        "splitspec.v1.VerifyStep.pipelined": st.integers(0, 3).map(
            bool
        ),  # mostly: any committed_len up to the true one
        "splitspec.v1.VerifyStep.assumed_token_ids": token,
        "splitspec.v1.DraftToken.token_id": token,
        "splitspec.v1.SparseQ.token_ids": token,
        "splitspec.v1.SparseQ.probs": probability,
        "splitspec.v1.LocalDraft.num_tokens": st.one_of(st.integers(0, 12), UINT32),
        "splitspec.v1.LocalDraft.prompt_lookup_min": st.one_of(st.integers(0, 6), UINT32),
        "splitspec.v1.LocalDraft.prompt_lookup_max": st.one_of(st.integers(0, 6), UINT32),
        "splitspec.v1.DraftStep.committed_len": length,
        "splitspec.v1.DraftStep.start": length,
        "splitspec.v1.DraftStep.token_ids": token,
        "splitspec.v1.DraftStep.num_tokens": st.one_of(st.integers(0, 12), UINT32),
        "splitspec.v1.DraftStep.assumed_token_ids": token,
        "splitspec.v1.GenerateRequest.prompt_token_ids": token,
        "splitspec.v1.SamplingParameters.max_tokens": st.one_of(st.integers(-2, 20), INT32),
        "splitspec.v1.SamplingParameters.stop_token_ids": token,
    }
    return Overrides(names)


@dataclass
class Tally:
    inputs: int = 0
    answers: dict[str, int] = field(default_factory=dict)
    crashes: list[str] = field(default_factory=list)

    def answered(self, kind: str) -> None:
        self.answers[kind] = self.answers.get(kind, 0) + 1

    def check_error(self, code: grpc.StatusCode, message: str, what: str) -> None:
        self.answered(code.name)
        if code in UNEXPECTED or not message:
            self.crashes.append(f"{what}: {code.name} {message!r}")


def _session(
    stub_call: Callable, requests: list[Message], tally: Tally, what: str, response_kind: Callable[[Message], str]
) -> None:
    """One stream: the requests (call ids 1..n), each sent once the one before is answered (so that a
    start is in place before the steps that follow it), then the stream ends."""
    for call_id, request in enumerate(requests, 1):
        request.call_id = call_id
    tally.inputs += len(requests)
    unanswered = {r.call_id for r in requests}
    answers: queue.Queue = queue.Queue()

    def one_at_a_time():
        for request in requests:
            yield request
            try:
                answers.get(timeout=ANSWER_TIMEOUT_S)
            except queue.Empty:
                return

    try:
        for response in stub_call(one_at_a_time(), timeout=ANSWER_TIMEOUT_S):
            answers.put(response.call_id)
            unanswered.discard(response.call_id)
            kind = response_kind(response)
            if kind == "error":
                tally.check_error(_code(response.error.code), response.error.message, what)
            else:
                tally.answered(kind)
    except grpc.RpcError as exc:
        tally.crashes.append(f"{what}: the stream broke: {exc.code().name} {exc.details()}")
        return
    if unanswered:
        tally.crashes.append(f"{what}: {len(unanswered)} of {len(requests)} calls got no answer")


def _code(value: int) -> grpc.StatusCode:
    return next((c for c in grpc.StatusCode if c.value[0] == value), grpc.StatusCode.UNKNOWN)


def _generate(stub: pb_grpc.GatewayStub, request: pb.GenerateRequest, tally: Tally) -> None:
    tally.inputs += 1
    try:
        for _ in stub.Generate(request, timeout=ANSWER_TIMEOUT_S):
            pass
        tally.answered("ok")
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            tally.crashes.append(f"gateway: no end within {ANSWER_TIMEOUT_S} s for {request}")
        else:
            tally.check_error(exc.code(), exc.details() or "", "gateway")


def _run_for(seconds: float, strategy: st.SearchStrategy, send: Callable[[object], None], seed: int) -> None:
    """Draw and send examples in batches until `seconds` pass; failures are tallied, not raised, so
    hypothesis neither stops nor shrinks."""
    deadline = time.monotonic() + seconds
    batch = 0
    while time.monotonic() < deadline:

        @hypothesis_seed(seed * 100_003 + batch)
        @settings(
            max_examples=25,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(strategy)
        def run(example) -> None:
            if time.monotonic() < deadline:
                send(example)

        run()
        batch += 1


def fuzz(
    model: str, seconds: float, targets: list[str], seed: int, log_dir: Path, max_memory_growth: float = 0.1
) -> bool:
    servers: list[Pod] = []
    ok = True
    try:
        verifier, proposer, gateway = start_ngram_stack(
            model, log_dir, servers, ["--max-num-seqs", "16"], ["--max-tokens-limit", "16"]
        )
        with grpc.insecure_channel(verifier.address) as channel:
            info = pb_grpc.VerifierStub(channel).GetInfo(pb.InfoRequest(), timeout=10)
        overrides = _overrides(info.vocab_size, info.max_model_len)
        channels = {s.name: grpc.insecure_channel(s.address) for s in servers}
        plans = {
            "verifier": (
                verifier,
                st.tuples(
                    st.lists(_starts(overrides), max_size=2),
                    st.lists(messages(pb.VerifierRequest, overrides), min_size=1, max_size=6),
                ).map(lambda parts: parts[0] + parts[1]),
                lambda requests, tally: _session(
                    pb_grpc.VerifierStub(channels["verifier"]).Verify,
                    requests,
                    tally,
                    "verifier",
                    lambda r: r.WhichOneof("kind"),
                ),  # fmt: skip
            ),
            "proposer": (
                proposer,
                st.lists(messages(pb.ProposerRequest, overrides), min_size=1, max_size=6),
                lambda requests, tally: _session(
                    pb_grpc.ProposerStub(channels["proposer"]).Propose,
                    requests,
                    tally,
                    "proposer",
                    lambda r: r.WhichOneof("kind"),
                ),  # fmt: skip
            ),
            "gateway": (
                gateway,
                messages(pb.GenerateRequest, overrides),
                lambda request, tally: _generate(pb_grpc.GatewayStub(channels["gateway"]), request, tally),
            ),
        }
        for target in targets:
            server, strategy, send = plans[target]
            tally = Tally()
            warm = Tally()
            _run_for(min(5.0, seconds / 4), strategy, lambda example: send(example, warm), seed)
            rss_warm = server.rss_bytes()
            started = time.monotonic()
            _run_for(seconds, strategy, lambda example: send(example, tally), seed + 1)
            elapsed = time.monotonic() - started
            tally.crashes += warm.crashes
            for s in servers:
                if s.proc.poll() is not None:
                    tally.crashes.append(f"{s.name} exited with {s.proc.returncode}")
                elif s.health() != health_pb2.HealthCheckResponse.SERVING:
                    tally.crashes.append(f"{s.name} is not SERVING")
            with grpc.insecure_channel(verifier.address) as channel:
                info = pb_grpc.VerifierStub(channel).GetInfo(pb.InfoRequest(), timeout=10)
            if info.num_sequences or info.num_free_blocks != info.num_total_blocks:
                tally.crashes.append(
                    f"the verifier holds {info.num_sequences} sequences and "
                    f"{info.num_total_blocks - info.num_free_blocks} KV blocks after the sessions ended"
                )
            growth = server.rss_bytes() / rss_warm - 1
            if growth > max_memory_growth:
                tally.crashes.append(f"{target}: resident memory grew {growth:.1%} after warm-up")
            answers = ", ".join(f"{k} {v}" for k, v in sorted(tally.answers.items(), key=lambda kv: -kv[1]))
            print(
                f"fuzz {target}: {tally.inputs} inputs in {elapsed:.0f} s, crashes {len(tally.crashes)}, "
                f"resident memory {growth:+.1%} after warm-up; answers: {answers}",
                flush=True,
            )
            for crash in tally.crashes[:10]:
                print(f"  crash: {crash}", flush=True)
            ok = ok and not tally.crashes
        for channel in channels.values():
            channel.close()
    finally:
        for server in reversed(servers):
            server.stop()
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="the verifier's and gateway's checkpoint")
    parser.add_argument("--seconds", type=float, default=60.0, help="fuzzing time per target")
    parser.add_argument("--targets", default="verifier,proposer,gateway")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--max-memory-growth", type=float, default=0.1, help="a target whose resident memory grows more fails"
    )
    parser.add_argument("--log-dir", default=None, help="where the servers' logs go (default: a temporary one)")
    args = parser.parse_args()
    targets = [t for t in args.targets.split(",") if t]
    unknown = set(targets) - {"verifier", "proposer", "gateway"}
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    if args.model == "default":
        from splitspec.default_model import ensure_default_model

        ensure_default_model()
    with tempfile.TemporaryDirectory() as scratch:
        log_dir = Path(args.log_dir or scratch)
        log_dir.mkdir(parents=True, exist_ok=True)
        ok = fuzz(args.model, args.seconds, targets, args.seed, log_dir, args.max_memory_growth)
        if not ok:
            print(f"fuzz: crashes found; server logs in {log_dir}", file=sys.stderr)
            if args.log_dir is None:
                for log in sorted(log_dir.glob("*.log")):
                    print(f"--- {log.name} (tail)\n{log.read_text(errors='replace')[-3000:]}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
