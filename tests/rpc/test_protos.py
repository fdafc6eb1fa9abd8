"""The wire contract: committed stubs match the .proto, and the contract names its version."""

from __future__ import annotations

import re

import pytest

from splitspec.rpc.grpc_server import CONTRACT_VERSION
from splitspec_protos import generate
from splitspec_protos import splitspec_v1_pb2 as pb


@pytest.fixture(scope="module")
def fresh() -> dict[str, str]:
    return generate.generated_texts()


@pytest.mark.parametrize("name", generate.OUTPUTS)
def test_committed_stubs_equal_freshly_generated_ones(fresh, name):
    committed = (generate.PROTO_DIR / name).read_text()
    assert committed == fresh[name], (
        f"splitspec_protos/{name} is stale: it differs from what splitspec_protos/{generate.PROTO} generates. "
        "Run `python -m splitspec_protos.generate` and commit the result."
    )


def test_contract_package_is_versioned():
    proto = (generate.PROTO_DIR / generate.PROTO).read_text()
    assert re.search(r"^package splitspec\.v1;$", proto, re.M)
    assert pb.DESCRIPTOR.package == "splitspec.v1"
    assert generate.PROTO == "splitspec_v1.proto"


def test_contract_version_names_the_package():
    package, _, revision = CONTRACT_VERSION.partition("/")
    assert package == pb.DESCRIPTOR.package
    assert revision.isdigit(), f"CONTRACT_VERSION {CONTRACT_VERSION!r} should read '<package>/<revision>'"
