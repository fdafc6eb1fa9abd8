"""Errors meant for users: each message says what was wrong and what to do."""

import grpc


class SplitspecError(ValueError):
    """A problem with user input or the environment, reported without a traceback by the CLI."""


class RunnerLost(SplitspecError):
    """The model runner can run no more passes (a tensor-parallel worker died): restart the model."""


class OutOfKVBlocks(RuntimeError):
    """The paged KV cache has too few free blocks for a step; the engine preempts and retries."""


class ServiceError(Exception):
    """A refusal a service reports to its caller, with the gRPC status it crosses the wire as."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
