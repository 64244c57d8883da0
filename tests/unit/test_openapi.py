"""The OpenAPI documents: links for schemathesis' stateful phase and for clients."""

from __future__ import annotations

from modelserve.server.management import ROUTES
from modelserve.server.openapi import build_document


def test_the_management_document_links_register_to_describe_scale_and_unregister() -> None:
    document = build_document("Management API", ROUTES)
    register = document["paths"]["/models"]["post"]["responses"]["200"]["links"]
    targets = {link["operationId"] for link in register.values()}
    assert targets == {"get_models_name", "put_models_name", "delete_models_name"}
    assert all(link["parameters"] == {"name": "$request.query.model_name"} for link in register.values())
    describe = document["paths"]["/models/{name}"]["get"]["responses"]["200"]["links"]
    assert {link["parameters"]["version"] for link in describe.values()} == {"$response.body#/0/modelVersion"}
    every_operation = {op["operationId"] for path in document["paths"].values() for op in path.values()}
    assert all(link["operationId"] in every_operation for link in [*register.values(), *describe.values()])


def test_links_to_operations_a_document_lacks_are_left_out() -> None:
    document = build_document("Inference API", [r for r in ROUTES if r.path == "/models" and r.method == "POST"])
    assert "links" not in document["paths"]["/models"]["post"]["responses"]["200"]
