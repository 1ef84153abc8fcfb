from __future__ import annotations

from flare_protocol._generated import common_pb2
from tests.server_harness import admin_stub


def test_admin_hello_names_the_caller_from_its_certificate(server, kits):
    stub, channel = admin_stub(kits["admin@org_a.com"], server.admin_address)
    with channel:
        reply = stub.Hello(common_pb2.Empty(), timeout=5)
    assert (reply.name, reply.org, reply.role, reply.project) == (
        "admin@org_a.com",
        "org_a",
        "project_admin",
        "testproj",
    )
