from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SamplingParameters(_message.Message):
    __slots__ = ("temperature", "top_p", "top_k", "max_tokens", "stop", "stop_token_ids", "ignore_eos", "seed", "min_tokens", "include_stop_str_in_output", "logprobs", "truncate_prompt_tokens", "presence_penalty", "frequency_penalty", "repetition_penalty", "structured_outputs", "prompt_logprobs", "min_p", "logit_bias", "skip_special_tokens", "spaces_between_special_tokens")
    class LogitBiasEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: float
        def __init__(self, key: _Optional[int] = ..., value: _Optional[float] = ...) -> None: ...
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    STOP_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    IGNORE_EOS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MIN_TOKENS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_STOP_STR_IN_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_PENALTY_FIELD_NUMBER: _ClassVar[int]
    FREQUENCY_PENALTY_FIELD_NUMBER: _ClassVar[int]
    REPETITION_PENALTY_FIELD_NUMBER: _ClassVar[int]
    STRUCTURED_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    MIN_P_FIELD_NUMBER: _ClassVar[int]
    LOGIT_BIAS_FIELD_NUMBER: _ClassVar[int]
    SKIP_SPECIAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SPACES_BETWEEN_SPECIAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_p: float
    top_k: int
    max_tokens: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    stop_token_ids: _containers.RepeatedScalarFieldContainer[int]
    ignore_eos: bool
    seed: int
    min_tokens: int
    include_stop_str_in_output: bool
    logprobs: int
    truncate_prompt_tokens: int
    presence_penalty: float
    frequency_penalty: float
    repetition_penalty: float
    structured_outputs: StructuredOutputs
    prompt_logprobs: int
    min_p: float
    logit_bias: _containers.ScalarMap[int, float]
    skip_special_tokens: bool
    spaces_between_special_tokens: bool
    def __init__(self, temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., max_tokens: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., stop_token_ids: _Optional[_Iterable[int]] = ..., ignore_eos: _Optional[bool] = ..., seed: _Optional[int] = ..., min_tokens: _Optional[int] = ..., include_stop_str_in_output: _Optional[bool] = ..., logprobs: _Optional[int] = ..., truncate_prompt_tokens: _Optional[int] = ..., presence_penalty: _Optional[float] = ..., frequency_penalty: _Optional[float] = ..., repetition_penalty: _Optional[float] = ..., structured_outputs: _Optional[_Union[StructuredOutputs, _Mapping]] = ..., prompt_logprobs: _Optional[int] = ..., min_p: _Optional[float] = ..., logit_bias: _Optional[_Mapping[int, float]] = ..., skip_special_tokens: _Optional[bool] = ..., spaces_between_special_tokens: _Optional[bool] = ...) -> None: ...

class StructuredOutputs(_message.Message):
    __slots__ = ("json", "json_object", "regex", "choice", "grammar")
    JSON_FIELD_NUMBER: _ClassVar[int]
    JSON_OBJECT_FIELD_NUMBER: _ClassVar[int]
    REGEX_FIELD_NUMBER: _ClassVar[int]
    CHOICE_FIELD_NUMBER: _ClassVar[int]
    GRAMMAR_FIELD_NUMBER: _ClassVar[int]
    json: str
    json_object: bool
    regex: str
    choice: _containers.RepeatedScalarFieldContainer[str]
    grammar: str
    def __init__(self, json: _Optional[str] = ..., json_object: _Optional[bool] = ..., regex: _Optional[str] = ..., choice: _Optional[_Iterable[str]] = ..., grammar: _Optional[str] = ...) -> None: ...

class TokenLogprobs(_message.Message):
    __slots__ = ("token_ids", "logprobs", "ranks")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    RANKS_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    logprobs: _containers.RepeatedScalarFieldContainer[float]
    ranks: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ..., logprobs: _Optional[_Iterable[float]] = ..., ranks: _Optional[_Iterable[int]] = ...) -> None: ...

class ChatMessage(_message.Message):
    __slots__ = ("role", "content", "tool_calls_json", "tool_call_id", "name")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALLS_JSON_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    tool_calls_json: str
    tool_call_id: str
    name: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ..., tool_calls_json: _Optional[str] = ..., tool_call_id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("prompt", "prompt_token_ids", "sampling", "speculation", "request_id", "messages", "session_id", "tools_json")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    SPECULATION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TOOLS_JSON_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    sampling: SamplingParameters
    speculation: _struct_pb2.Struct
    request_id: str
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    session_id: str
    tools_json: str
    def __init__(self, prompt: _Optional[str] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., sampling: _Optional[_Union[SamplingParameters, _Mapping]] = ..., speculation: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., request_id: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., session_id: _Optional[str] = ..., tools_json: _Optional[str] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "completion_tokens")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    completion_tokens: int
    def __init__(self, prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ...) -> None: ...

class SpeculationStats(_message.Message):
    __slots__ = ("num_rounds", "num_draft_tokens", "num_accepted_tokens", "mean_accepted_tokens_per_round", "drafted_per_position", "accepted_per_position")
    NUM_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    NUM_DRAFT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NUM_ACCEPTED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MEAN_ACCEPTED_TOKENS_PER_ROUND_FIELD_NUMBER: _ClassVar[int]
    DRAFTED_PER_POSITION_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_PER_POSITION_FIELD_NUMBER: _ClassVar[int]
    num_rounds: int
    num_draft_tokens: int
    num_accepted_tokens: int
    mean_accepted_tokens_per_round: float
    drafted_per_position: _containers.RepeatedScalarFieldContainer[int]
    accepted_per_position: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, num_rounds: _Optional[int] = ..., num_draft_tokens: _Optional[int] = ..., num_accepted_tokens: _Optional[int] = ..., mean_accepted_tokens_per_round: _Optional[float] = ..., drafted_per_position: _Optional[_Iterable[int]] = ..., accepted_per_position: _Optional[_Iterable[int]] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("token_ids", "text", "finish_reason", "stop_reason", "usage", "speculation", "request_id", "logprobs", "prompt_logprobs")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    STOP_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    SPECULATION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    text: str
    finish_reason: str
    stop_reason: str
    usage: Usage
    speculation: SpeculationStats
    request_id: str
    logprobs: _containers.RepeatedCompositeFieldContainer[TokenLogprobs]
    prompt_logprobs: _containers.RepeatedCompositeFieldContainer[TokenLogprobs]
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ..., text: _Optional[str] = ..., finish_reason: _Optional[str] = ..., stop_reason: _Optional[str] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., speculation: _Optional[_Union[SpeculationStats, _Mapping]] = ..., request_id: _Optional[str] = ..., logprobs: _Optional[_Iterable[_Union[TokenLogprobs, _Mapping]]] = ..., prompt_logprobs: _Optional[_Iterable[_Union[TokenLogprobs, _Mapping]]] = ...) -> None: ...

class ModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("model", "vocab_size", "max_model_len", "method", "num_speculative_tokens", "contract_version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_MODEL_LEN_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    NUM_SPECULATIVE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CONTRACT_VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    vocab_size: int
    max_model_len: int
    method: str
    num_speculative_tokens: int
    contract_version: str
    def __init__(self, model: _Optional[str] = ..., vocab_size: _Optional[int] = ..., max_model_len: _Optional[int] = ..., method: _Optional[str] = ..., num_speculative_tokens: _Optional[int] = ..., contract_version: _Optional[str] = ...) -> None: ...

class SparseQ(_message.Message):
    __slots__ = ("token_ids", "probs")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    PROBS_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    probs: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ..., probs: _Optional[_Iterable[float]] = ...) -> None: ...

class DraftToken(_message.Message):
    __slots__ = ("token_id", "q", "parent_distance")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    Q_FIELD_NUMBER: _ClassVar[int]
    PARENT_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    token_id: int
    q: SparseQ
    parent_distance: int
    def __init__(self, token_id: _Optional[int] = ..., q: _Optional[_Union[SparseQ, _Mapping]] = ..., parent_distance: _Optional[int] = ...) -> None: ...

class HiddenStates(_message.Message):
    __slots__ = ("data", "dtype", "shape")
    DATA_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, data: _Optional[bytes] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReleaseSequence(_message.Message):
    __slots__ = ("start", "token_ids")
    START_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    start: int
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, start: _Optional[int] = ..., token_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StartSequence(_message.Message):
    __slots__ = ("token_ids", "temperature", "top_k", "top_p", "seed", "return_hidden_states", "return_all_hidden_states", "time_limit_s", "hidden_layers", "banned_token_ids", "banned_until_len", "logprobs", "presence_penalty", "frequency_penalty", "repetition_penalty", "prompt_len", "structured_outputs", "prompt_logprobs", "min_p", "logit_bias")
    class LogitBiasEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: float
        def __init__(self, key: _Optional[int] = ..., value: _Optional[float] = ...) -> None: ...
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    RETURN_HIDDEN_STATES_FIELD_NUMBER: _ClassVar[int]
    RETURN_ALL_HIDDEN_STATES_FIELD_NUMBER: _ClassVar[int]
    TIME_LIMIT_S_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_LAYERS_FIELD_NUMBER: _ClassVar[int]
    BANNED_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    BANNED_UNTIL_LEN_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_PENALTY_FIELD_NUMBER: _ClassVar[int]
    FREQUENCY_PENALTY_FIELD_NUMBER: _ClassVar[int]
    REPETITION_PENALTY_FIELD_NUMBER: _ClassVar[int]
    PROMPT_LEN_FIELD_NUMBER: _ClassVar[int]
    STRUCTURED_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    MIN_P_FIELD_NUMBER: _ClassVar[int]
    LOGIT_BIAS_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    temperature: float
    top_k: int
    top_p: float
    seed: int
    return_hidden_states: bool
    return_all_hidden_states: bool
    time_limit_s: float
    hidden_layers: _containers.RepeatedScalarFieldContainer[int]
    banned_token_ids: _containers.RepeatedScalarFieldContainer[int]
    banned_until_len: int
    logprobs: int
    presence_penalty: float
    frequency_penalty: float
    repetition_penalty: float
    prompt_len: int
    structured_outputs: StructuredOutputs
    prompt_logprobs: int
    min_p: float
    logit_bias: _containers.ScalarMap[int, float]
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ..., temperature: _Optional[float] = ..., top_k: _Optional[int] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ..., return_hidden_states: _Optional[bool] = ..., return_all_hidden_states: _Optional[bool] = ..., time_limit_s: _Optional[float] = ..., hidden_layers: _Optional[_Iterable[int]] = ..., banned_token_ids: _Optional[_Iterable[int]] = ..., banned_until_len: _Optional[int] = ..., logprobs: _Optional[int] = ..., presence_penalty: _Optional[float] = ..., frequency_penalty: _Optional[float] = ..., repetition_penalty: _Optional[float] = ..., prompt_len: _Optional[int] = ..., structured_outputs: _Optional[_Union[StructuredOutputs, _Mapping]] = ..., prompt_logprobs: _Optional[int] = ..., min_p: _Optional[float] = ..., logit_bias: _Optional[_Mapping[int, float]] = ...) -> None: ...

class VerifyStep(_message.Message):
    __slots__ = ("committed_len", "drafts", "local_draft", "pipelined", "assumed_token_ids", "remote_draft", "every_draft")
    COMMITTED_LEN_FIELD_NUMBER: _ClassVar[int]
    DRAFTS_FIELD_NUMBER: _ClassVar[int]
    LOCAL_DRAFT_FIELD_NUMBER: _ClassVar[int]
    PIPELINED_FIELD_NUMBER: _ClassVar[int]
    ASSUMED_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    REMOTE_DRAFT_FIELD_NUMBER: _ClassVar[int]
    EVERY_DRAFT_FIELD_NUMBER: _ClassVar[int]
    committed_len: int
    drafts: _containers.RepeatedCompositeFieldContainer[DraftToken]
    local_draft: LocalDraft
    pipelined: bool
    assumed_token_ids: _containers.RepeatedScalarFieldContainer[int]
    remote_draft: RemoteDraft
    every_draft: bool
    def __init__(self, committed_len: _Optional[int] = ..., drafts: _Optional[_Iterable[_Union[DraftToken, _Mapping]]] = ..., local_draft: _Optional[_Union[LocalDraft, _Mapping]] = ..., pipelined: _Optional[bool] = ..., assumed_token_ids: _Optional[_Iterable[int]] = ..., remote_draft: _Optional[_Union[RemoteDraft, _Mapping]] = ..., every_draft: _Optional[bool] = ...) -> None: ...

class RemoteDraft(_message.Message):
    __slots__ = ("num_tokens", "proposer", "server_name", "num_prompt_tokens", "timeout_s", "skip_rejection_drafts", "tree_width")
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PROPOSER_FIELD_NUMBER: _ClassVar[int]
    SERVER_NAME_FIELD_NUMBER: _ClassVar[int]
    NUM_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    SKIP_REJECTION_DRAFTS_FIELD_NUMBER: _ClassVar[int]
    TREE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    num_tokens: int
    proposer: str
    server_name: str
    num_prompt_tokens: int
    timeout_s: float
    skip_rejection_drafts: bool
    tree_width: int
    def __init__(self, num_tokens: _Optional[int] = ..., proposer: _Optional[str] = ..., server_name: _Optional[str] = ..., num_prompt_tokens: _Optional[int] = ..., timeout_s: _Optional[float] = ..., skip_rejection_drafts: _Optional[bool] = ..., tree_width: _Optional[int] = ...) -> None: ...

class LocalDraft(_message.Message):
    __slots__ = ("num_tokens", "prompt_lookup_min", "prompt_lookup_max", "speculator", "tree_width")
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_LOOKUP_MIN_FIELD_NUMBER: _ClassVar[int]
    PROMPT_LOOKUP_MAX_FIELD_NUMBER: _ClassVar[int]
    SPECULATOR_FIELD_NUMBER: _ClassVar[int]
    TREE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    num_tokens: int
    prompt_lookup_min: int
    prompt_lookup_max: int
    speculator: bool
    tree_width: int
    def __init__(self, num_tokens: _Optional[int] = ..., prompt_lookup_min: _Optional[int] = ..., prompt_lookup_max: _Optional[int] = ..., speculator: _Optional[bool] = ..., tree_width: _Optional[int] = ...) -> None: ...

class TraceContext(_message.Message):
    __slots__ = ("traceparent", "tracestate")
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    TRACESTATE_FIELD_NUMBER: _ClassVar[int]
    traceparent: str
    tracestate: str
    def __init__(self, traceparent: _Optional[str] = ..., tracestate: _Optional[str] = ...) -> None: ...

class VerifierRequest(_message.Message):
    __slots__ = ("call_id", "seq_id", "start", "step", "release", "trace_context")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_ID_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    call_id: int
    seq_id: str
    start: StartSequence
    step: VerifyStep
    release: ReleaseSequence
    trace_context: TraceContext
    def __init__(self, call_id: _Optional[int] = ..., seq_id: _Optional[str] = ..., start: _Optional[_Union[StartSequence, _Mapping]] = ..., step: _Optional[_Union[VerifyStep, _Mapping]] = ..., release: _Optional[_Union[ReleaseSequence, _Mapping]] = ..., trace_context: _Optional[_Union[TraceContext, _Mapping]] = ...) -> None: ...

class StepResult(_message.Message):
    __slots__ = ("committed_len", "num_accepted", "token_ids", "hidden_states", "num_drafted", "draft_wait_s", "proposer_failed", "logprobs", "prompt_logprobs", "tree_path")
    COMMITTED_LEN_FIELD_NUMBER: _ClassVar[int]
    NUM_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_STATES_FIELD_NUMBER: _ClassVar[int]
    NUM_DRAFTED_FIELD_NUMBER: _ClassVar[int]
    DRAFT_WAIT_S_FIELD_NUMBER: _ClassVar[int]
    PROPOSER_FAILED_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    TREE_PATH_FIELD_NUMBER: _ClassVar[int]
    committed_len: int
    num_accepted: int
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    hidden_states: HiddenStates
    num_drafted: int
    draft_wait_s: float
    proposer_failed: bool
    logprobs: _containers.RepeatedCompositeFieldContainer[TokenLogprobs]
    prompt_logprobs: _containers.RepeatedCompositeFieldContainer[TokenLogprobs]
    tree_path: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, committed_len: _Optional[int] = ..., num_accepted: _Optional[int] = ..., token_ids: _Optional[_Iterable[int]] = ..., hidden_states: _Optional[_Union[HiddenStates, _Mapping]] = ..., num_drafted: _Optional[int] = ..., draft_wait_s: _Optional[float] = ..., proposer_failed: _Optional[bool] = ..., logprobs: _Optional[_Iterable[_Union[TokenLogprobs, _Mapping]]] = ..., prompt_logprobs: _Optional[_Iterable[_Union[TokenLogprobs, _Mapping]]] = ..., tree_path: _Optional[_Iterable[int]] = ...) -> None: ...

class VerifierResponse(_message.Message):
    __slots__ = ("call_id", "seq_id", "ack", "result", "error")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_ID_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    call_id: int
    seq_id: str
    ack: Ack
    result: StepResult
    error: Error
    def __init__(self, call_id: _Optional[int] = ..., seq_id: _Optional[str] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., result: _Optional[_Union[StepResult, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class VerifierInfo(_message.Message):
    __slots__ = ("model", "vocab_size", "max_model_len", "eos_token_ids", "num_free_blocks", "num_total_blocks", "num_sequences", "max_num_seqs", "contract_version", "cost_rows", "cost_seconds", "speculator")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_MODEL_LEN_FIELD_NUMBER: _ClassVar[int]
    EOS_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    NUM_FREE_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    NUM_TOTAL_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    NUM_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    MAX_NUM_SEQS_FIELD_NUMBER: _ClassVar[int]
    CONTRACT_VERSION_FIELD_NUMBER: _ClassVar[int]
    COST_ROWS_FIELD_NUMBER: _ClassVar[int]
    COST_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SPECULATOR_FIELD_NUMBER: _ClassVar[int]
    model: str
    vocab_size: int
    max_model_len: int
    eos_token_ids: _containers.RepeatedScalarFieldContainer[int]
    num_free_blocks: int
    num_total_blocks: int
    num_sequences: int
    max_num_seqs: int
    contract_version: str
    cost_rows: _containers.RepeatedScalarFieldContainer[int]
    cost_seconds: _containers.RepeatedScalarFieldContainer[float]
    speculator: ProposerInfo
    def __init__(self, model: _Optional[str] = ..., vocab_size: _Optional[int] = ..., max_model_len: _Optional[int] = ..., eos_token_ids: _Optional[_Iterable[int]] = ..., num_free_blocks: _Optional[int] = ..., num_total_blocks: _Optional[int] = ..., num_sequences: _Optional[int] = ..., max_num_seqs: _Optional[int] = ..., contract_version: _Optional[str] = ..., cost_rows: _Optional[_Iterable[int]] = ..., cost_seconds: _Optional[_Iterable[float]] = ..., speculator: _Optional[_Union[ProposerInfo, _Mapping]] = ...) -> None: ...

class DraftStep(_message.Message):
    __slots__ = ("committed_len", "start", "token_ids", "num_tokens", "temperature", "top_k", "seed", "hidden_state", "assumed_token_ids", "num_prompt_tokens", "time_limit_s", "excluded_first_token_ids", "tree_width")
    COMMITTED_LEN_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_STATE_FIELD_NUMBER: _ClassVar[int]
    ASSUMED_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    NUM_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TIME_LIMIT_S_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_FIRST_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TREE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    committed_len: int
    start: int
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    num_tokens: int
    temperature: float
    top_k: int
    seed: int
    hidden_state: HiddenStates
    assumed_token_ids: _containers.RepeatedScalarFieldContainer[int]
    num_prompt_tokens: int
    time_limit_s: float
    excluded_first_token_ids: _containers.RepeatedScalarFieldContainer[int]
    tree_width: int
    def __init__(self, committed_len: _Optional[int] = ..., start: _Optional[int] = ..., token_ids: _Optional[_Iterable[int]] = ..., num_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_k: _Optional[int] = ..., seed: _Optional[int] = ..., hidden_state: _Optional[_Union[HiddenStates, _Mapping]] = ..., assumed_token_ids: _Optional[_Iterable[int]] = ..., num_prompt_tokens: _Optional[int] = ..., time_limit_s: _Optional[float] = ..., excluded_first_token_ids: _Optional[_Iterable[int]] = ..., tree_width: _Optional[int] = ...) -> None: ...

class ProposerRequest(_message.Message):
    __slots__ = ("call_id", "seq_id", "draft", "release", "trace_context")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_ID_FIELD_NUMBER: _ClassVar[int]
    DRAFT_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    call_id: int
    seq_id: str
    draft: DraftStep
    release: ReleaseSequence
    trace_context: TraceContext
    def __init__(self, call_id: _Optional[int] = ..., seq_id: _Optional[str] = ..., draft: _Optional[_Union[DraftStep, _Mapping]] = ..., release: _Optional[_Union[ReleaseSequence, _Mapping]] = ..., trace_context: _Optional[_Union[TraceContext, _Mapping]] = ...) -> None: ...

class DraftResult(_message.Message):
    __slots__ = ("committed_len", "drafts", "needs_full_context")
    COMMITTED_LEN_FIELD_NUMBER: _ClassVar[int]
    DRAFTS_FIELD_NUMBER: _ClassVar[int]
    NEEDS_FULL_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    committed_len: int
    drafts: _containers.RepeatedCompositeFieldContainer[DraftToken]
    needs_full_context: bool
    def __init__(self, committed_len: _Optional[int] = ..., drafts: _Optional[_Iterable[_Union[DraftToken, _Mapping]]] = ..., needs_full_context: _Optional[bool] = ...) -> None: ...

class ProposerResponse(_message.Message):
    __slots__ = ("call_id", "seq_id", "ack", "draft", "error")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_ID_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    DRAFT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    call_id: int
    seq_id: str
    ack: Ack
    draft: DraftResult
    error: Error
    def __init__(self, call_id: _Optional[int] = ..., seq_id: _Optional[str] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., draft: _Optional[_Union[DraftResult, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class ProposerInfo(_message.Message):
    __slots__ = ("method", "num_speculative_tokens", "contract_version", "needs_hidden_states", "needs_all_hidden_states", "samples_drafts", "sizes_own_drafts", "remembers_outputs", "drafts_ahead", "drafts_after_rejection", "max_num_speculative_tokens", "hidden_layers")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    NUM_SPECULATIVE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CONTRACT_VERSION_FIELD_NUMBER: _ClassVar[int]
    NEEDS_HIDDEN_STATES_FIELD_NUMBER: _ClassVar[int]
    NEEDS_ALL_HIDDEN_STATES_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_DRAFTS_FIELD_NUMBER: _ClassVar[int]
    SIZES_OWN_DRAFTS_FIELD_NUMBER: _ClassVar[int]
    REMEMBERS_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    DRAFTS_AHEAD_FIELD_NUMBER: _ClassVar[int]
    DRAFTS_AFTER_REJECTION_FIELD_NUMBER: _ClassVar[int]
    MAX_NUM_SPECULATIVE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_LAYERS_FIELD_NUMBER: _ClassVar[int]
    method: str
    num_speculative_tokens: int
    contract_version: str
    needs_hidden_states: bool
    needs_all_hidden_states: bool
    samples_drafts: bool
    sizes_own_drafts: bool
    remembers_outputs: bool
    drafts_ahead: bool
    drafts_after_rejection: bool
    max_num_speculative_tokens: int
    hidden_layers: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, method: _Optional[str] = ..., num_speculative_tokens: _Optional[int] = ..., contract_version: _Optional[str] = ..., needs_hidden_states: _Optional[bool] = ..., needs_all_hidden_states: _Optional[bool] = ..., samples_drafts: _Optional[bool] = ..., sizes_own_drafts: _Optional[bool] = ..., remembers_outputs: _Optional[bool] = ..., drafts_ahead: _Optional[bool] = ..., drafts_after_rejection: _Optional[bool] = ..., max_num_speculative_tokens: _Optional[int] = ..., hidden_layers: _Optional[_Iterable[int]] = ...) -> None: ...
