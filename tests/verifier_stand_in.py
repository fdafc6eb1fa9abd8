"""What the gateway's loop reads of a VerifierBackend, for test verifiers that answer steps themselves."""

from __future__ import annotations

from dataclasses import dataclass, field

from splitspec.adaptive_k import Ewma
from splitspec_protos import splitspec_v1_pb2 as pb


@dataclass
class VerifierStandIn:
    """A live verifier with no measured costs, to which starting and releasing a sequence always succeed;
    subclasses answer `step`."""

    address: str = "verifier"
    info: pb.VerifierInfo = field(default_factory=pb.VerifierInfo)
    cost_model: None = None
    link: Ewma = field(default_factory=Ewma)
    num_sequences: int = 0
    load: float = 0.0
    kv_free_share: float = 1.0
    superseded: bool = False

    def plan_step(self, seq_id: str, rows: int, expected_tokens: float) -> None:
        pass

    def others_in_pass(self, seq_id: str) -> tuple[int, float]:
        return 0, 0.0

    def forget(self, seq_id: str) -> None:
        pass

    def mark_down(self) -> None:
        self.info = None

    async def start(self, seq_id: str, token_ids: list[int], *args) -> None:
        pass

    async def release(self, seq_id: str) -> None:
        pass
