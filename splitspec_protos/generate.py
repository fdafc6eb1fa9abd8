"""Regenerate the Python stubs from splitspec_v1.proto: `python -m splitspec_protos.generate`.

The stubs are committed; tests/rpc/test_protos.py fails when they are stale.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).parent
PROTO = "splitspec_v1.proto"
OUTPUTS = ("splitspec_v1_pb2.py", "splitspec_v1_pb2.pyi", "splitspec_v1_pb2_grpc.py")


def generate(out_dir: Path) -> None:
    import grpc_tools
    from grpc_tools import protoc

    include = str(Path(grpc_tools.__file__).parent / "_proto")
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        str(PROTO_DIR / PROTO),
    ]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed on {PROTO}")
    grpc_file = out_dir / "splitspec_v1_pb2_grpc.py"
    # protoc writes a top-level import; the stubs live in the `splitspec_protos` package
    text = re.sub(
        r"^import splitspec_v1_pb2 as",
        "from splitspec_protos import splitspec_v1_pb2 as",
        grpc_file.read_text(),
        flags=re.M,
    )
    grpc_file.write_text(text)


def generated_texts() -> dict[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        return {name: (Path(tmp) / name).read_text() for name in OUTPUTS}


if __name__ == "__main__":
    for name, text in generated_texts().items():
        (PROTO_DIR / name).write_text(text)
    print(f"wrote {', '.join(OUTPUTS)}", file=sys.stderr)
