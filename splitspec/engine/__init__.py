"""The in-process engine: schedule, propose and verify, commit. It composes a drafter and the verify
pass, which it is handed, over the core."""

from splitspec.engine.engine import Engine
from splitspec.engine.scheduler import Scheduler

__all__ = ["Engine", "Scheduler"]
