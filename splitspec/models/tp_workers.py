"""The processes of a tensor-parallel runner: rank 0 drives in the caller's process, ranks 1..N-1 are
workers it starts and owns.

For every pass the driver broadcasts the pass's layout (token ids, positions, cache slots, block
tables; int64 tensors through torch.distributed, never pickles), then every rank runs the same
forward on its shard. Workers die with the driver (PR_SET_PDEATHSIG), and a worker that dies turns
the driver's next collective into `TensorParallelWorkerLost`, never a hang.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
import weakref
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from splitspec.errors import RunnerLost, SplitspecError
from splitspec.models.pass_layout import PassLayout
from splitspec.net_ports import free_port

_FORWARD, _STOP = 1, 0
_HEADER = 7
COLLECTIVE_TIMEOUT = timedelta(minutes=5)
"""A collective that waits longer than this fails; a worker that died fails it at once."""


class TensorParallelWorkerLost(RunnerLost):
    """A worker process of the tensor-parallel group died; the runner cannot run another pass."""


def broadcast_layout(layout: PassLayout, device: torch.device) -> None:
    max_blocks = max((len(t) for t in layout.block_tables), default=0)
    header = [
        _FORWARD, len(layout.tokens), len(layout.seq_lens), max_blocks, len(layout.logit_rows), len(layout.hidden_rows),
        len(layout.aux_layers),
    ]  # fmt: skip
    tables = [b for t in layout.block_tables for b in t + [0] * (max_blocks - len(t))]
    payload = (
        layout.tokens + layout.positions + layout.slots + tables + layout.seq_lens + layout.query_lens
        + [len(t) for t in layout.block_tables] + layout.logit_rows + layout.hidden_rows + layout.aux_layers
    )  # fmt: skip
    dist.broadcast(torch.tensor(header, dtype=torch.int64, device=device), src=0)
    dist.broadcast(torch.tensor(payload, dtype=torch.int64, device=device), src=0)


def broadcast_stop(device: torch.device) -> None:
    dist.broadcast(torch.tensor([_STOP] + [0] * (_HEADER - 1), dtype=torch.int64, device=device), src=0)


def receive_layout(device: torch.device) -> PassLayout | None:
    """The driver's next pass; None when it says stop."""
    header = torch.empty(_HEADER, dtype=torch.int64, device=device)
    dist.broadcast(header, src=0)
    op, tokens, seqs, max_blocks, logit_rows, hidden_rows, aux_layers = header.tolist()
    if op == _STOP:
        return None
    payload = torch.empty(
        3 * tokens + seqs * (max_blocks + 3) + logit_rows + hidden_rows + aux_layers, dtype=torch.int64, device=device
    )
    dist.broadcast(payload, src=0)
    values = payload.tolist()
    parts, at = [], 0
    for n in (tokens, tokens, tokens, seqs * max_blocks, seqs, seqs, seqs, logit_rows, hidden_rows, aux_layers):
        parts.append(values[at : at + n])
        at += n
    flat_tables, table_lens = parts[3], parts[6]
    tables = [flat_tables[b * max_blocks : b * max_blocks + table_lens[b]] for b in range(seqs)]
    return PassLayout(parts[0], parts[1], parts[2], tables, parts[4], parts[5], parts[7], parts[8], parts[9])


def rank_device(device: torch.device, rank: int) -> torch.device:
    """Rank r's device: the CPU for every rank, or the r-th CUDA device after the driver's."""
    if device.type != "cuda":
        return device
    return torch.device("cuda", (device.index or 0) + rank)


_active: weakref.ref[WorkerGroup] | None = None
"""The group whose process group this process joined, while it lives."""


class WorkerGroup:
    """Ranks 1..size-1, started as child processes; the caller becomes rank 0 of the default group."""

    def __init__(self, size: int, model_path: Path, runner_config, device: torch.device) -> None:
        global _active
        if dist.is_initialized():
            previous = _active() if _active is not None else None
            if _active is None or (previous is not None and previous._finalizer.alive):
                raise SplitspecError(
                    "this process already runs a tensor-parallel model (one per process); close() it first"
                )
            dist.destroy_process_group()  # left by a model that was dropped without close()
        self.size = size
        self.device = device
        address = f"tcp://127.0.0.1:{free_port()}"
        config = json.dumps(asdict(runner_config))
        self.processes = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "splitspec.models.tp_workers",
                    "--rank",
                    str(rank),
                    "--size",
                    str(size),
                    "--address",
                    address,
                    "--model",
                    str(model_path),
                    "--runner-config",
                    config,
                    "--driver-pid",
                    str(os.getpid()),
                ],  # fmt: skip
            )
            for rank in range(1, size)
        ]
        self._finalizer = weakref.finalize(self, _kill, self.processes)  # collected or at exit: nobody waits
        if device.type == "cuda":  # NCCL binds each rank to the current device
            torch.cuda.set_device(device)
        try:
            dist.init_process_group(
                "nccl" if device.type == "cuda" else "gloo",
                init_method=address,
                rank=0,
                world_size=size,
                timeout=COLLECTIVE_TIMEOUT,
            )
        except Exception as exc:
            self._finalizer()
            raise SplitspecError(f"tensor-parallel workers did not start: {exc}") from None
        _active = weakref.ref(self)
        self._threads = torch.get_num_threads()
        if device.type == "cpu":  # the ranks share the cores; close() gives them back
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // size))

    def lost(self) -> list[int]:
        """Ranks whose process has exited."""
        return [rank for rank, p in enumerate(self.processes, start=1) if p.poll() is not None]

    def wait_for_loss(self, seconds: float = 5.0) -> list[int]:
        """After a failed collective: the ranks that exited, given a moment to be reaped."""
        deadline = time.monotonic() + seconds
        while not (lost := self.lost()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return lost

    def close(self, graceful: bool = True) -> None:
        """Tell the workers to stop, wait for them (killing stragglers), and leave the group.
        graceful False: the group is broken (a rank died, or a pass failed half-way); kill them."""
        if not self._finalizer.alive:
            return
        if graceful and not self.lost():
            try:
                broadcast_stop(self.device)
                _wait(self.processes, seconds=10)
            except Exception:  # a worker died meanwhile: the rest are killed below
                pass
        self._finalizer()
        if dist.is_initialized():
            dist.destroy_process_group()
        torch.set_num_threads(self._threads)


def _wait(processes: list[subprocess.Popen], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    for p in processes:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return


def _kill(processes: list[subprocess.Popen]) -> None:
    for p in processes:
        if p.poll() is None:
            p.kill()
        p.wait()


def _die_with_parent(driver_pid: int) -> None:
    """SIGKILL this worker when its driver exits, however it exits (Linux)."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != driver_pid:  # the driver died before the line above took effect
        os._exit(1)


def _worker_main() -> None:
    parser = argparse.ArgumentParser(prog="splitspec-tp-worker")
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--address", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--runner-config", required=True)
    parser.add_argument("--driver-pid", type=int, required=True)
    args = parser.parse_args()
    _die_with_parent(args.driver_pid)
    from splitspec.config import RunnerConfig
    from splitspec.models.loader import load_runner
    from splitspec.models.tensor_parallel import TensorParallel

    config = RunnerConfig(**json.loads(args.runner_config))
    if config.device == "cpu":  # the ranks share the cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.size))
    backend = "nccl" if config.device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(rank_device(torch.device(config.device), args.rank))
    dist.init_process_group(
        backend, init_method=args.address, rank=args.rank, world_size=args.size, timeout=COLLECTIVE_TIMEOUT
    )
    try:
        runner = load_runner(Path(args.model), config, tp=TensorParallel(args.rank, args.size))
        while (layout := receive_layout(runner.device)) is not None:
            runner.compute(layout)
    except Exception as exc:  # the driver sees this rank leave; say why here
        print(f"splitspec tensor-parallel worker {args.rank}: {exc}", file=sys.stderr, flush=True)
        os._exit(1)
    dist.destroy_process_group()


if __name__ == "__main__":
    _worker_main()
