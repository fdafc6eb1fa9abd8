"""Flags more than one subcommand takes, with their environment defaults."""

from __future__ import annotations

import argparse
import os

from splitspec.devices import DEVICE_HELP


def env_default(name: str, default):
    """SPLITSPEC_<name> as the flag's default. It stays a string: argparse converts it with the flag's
    type only for the subcommand that runs, and reports a bad value as it would a bad flag."""
    return os.environ.get(f"SPLITSPEC_{name}", default)


def add_device_flag(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--device",
        default=env_default("DEVICE", "auto"),
        help=f"where {what} runs: {DEVICE_HELP} (env SPLITSPEC_DEVICE)",
    )


def add_tensor_parallel_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tensor-parallel-size",
        "-tp",
        type=int,
        default=env_default("TENSOR_PARALLEL_SIZE", 1),
        help="split the target over this many processes, one device each (env SPLITSPEC_TENSOR_PARALLEL_SIZE)",
    )


def add_enforce_eager_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--enforce-eager",
        action="store_true",
        help="never replay CUDA graphs: every pass of the target runs kernel by kernel (as in vLLM)",
    )
