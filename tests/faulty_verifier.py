"""`python tests/faulty_verifier.py N serve-verifier ...`: the splitspec CLI with a planted fault, the
verifier's Nth verify pass (from 1) raising as a broken device would. The fault lives here, on the test
side: nothing a production pod reads can turn it on."""

from __future__ import annotations

import sys

from splitspec.entrypoints.cli import main
from verifier_svc.verifier import Verifier


def plant_fault(failing_pass: int) -> None:
    verify = Verifier.verify
    passes = 0

    def verify_or_fail(self, *args, **kwargs):
        nonlocal passes
        passes += 1
        if passes == failing_pass:
            raise RuntimeError(f"planted fault: pass {passes} fails")
        return verify(self, *args, **kwargs)

    Verifier.verify = verify_or_fail


if __name__ == "__main__":
    plant_fault(int(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
