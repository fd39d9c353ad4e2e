"""The OpenAPI document (src/roomcast/web/openapi.json) against itself and the app's routes.

The app is built as ``roomcast serve`` builds it (in-memory backends), never started:
what its router registers is what the document must describe, method for method.
"""

from __future__ import annotations

import copy
import json
from importlib import resources
from typing import Any

import jsonschema_rs
import pytest
import schemathesis

from roomcast import api
from roomcast.broker.memory import MemoryBroker
from roomcast.config import Limits, ServerConfig
from roomcast.node import Node
from roomcast.protocol.codes import ErrorCode
from roomcast.server import _STATUS_CODES, RoomcastServer
from roomcast.store.memory import MemoryStore

#: Answers past 399 that are not roomcast's JSON error: readiness says what failed, and
#: aiohttp's file response answers conditions and ranges with no body.
NOT_ERRORS = frozenset(
    {("/ready", "503"), ("/files/{file_id}", "412"), ("/files/{file_id}", "416")}
)
#: The keys of a path item that are operations (OpenAPI 3.1, "Path Item Object").
METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})


def document() -> dict[str, Any]:
    """The document as the installed package ships it."""
    text = resources.files("roomcast.web").joinpath("openapi.json").read_text()
    return json.loads(text)  # type: ignore[no-any-return]


def documented() -> set[tuple[str, str]]:
    """Every (METHOD, path) the document describes."""
    return {
        (method.upper(), path)
        for path, item in document()["paths"].items()
        for method in item
        if method in METHODS
    }


def registered() -> set[tuple[str, str]]:
    """Every (METHOD, path) the server's aiohttp app routes, but the HEAD each GET gets."""
    server = RoomcastServer(
        Node(store=MemoryStore(), broker=MemoryBroker(), limits=Limits()), ServerConfig()
    )
    routes = {
        (route.method, route.resource.canonical)
        for route in server.app.router.routes()
        if route.resource is not None
    }
    return {(m, p) for m, p in routes if not (m == "HEAD" and ("GET", p) in routes)}


def test_the_document_is_valid_openapi_3_1() -> None:
    """schemathesis's validator (the OpenAPI 3.1 meta-schema) accepts the document."""
    doc = document()
    assert doc["openapi"].startswith("3.1.")
    schemathesis.openapi.from_dict(doc).validate()


def test_the_validator_refuses_a_broken_document() -> None:
    """The same check fails on a document with a parameter in no valid place."""
    broken = copy.deepcopy(document())
    broken["paths"]["/api/search"]["get"]["parameters"][0]["in"] = "body"
    with pytest.raises(jsonschema_rs.ValidationError):
        schemathesis.openapi.from_dict(broken).validate()


def test_every_route_of_the_app_is_documented_and_nothing_else() -> None:
    """The app's routes and the document's operations are the same set (HEAD aside)."""
    routes, operations = registered(), documented()
    assert routes - operations == set(), "routes the document does not describe"
    assert operations - routes == set(), "operations the server does not route"
    assert len(operations) >= 51


def test_every_operation_has_an_id_a_success_and_json_errors() -> None:
    """Each operation has a unique operationId, a 1xx/2xx answer, and JSON for every 4xx/5xx."""
    ids = []
    for path, item in document()["paths"].items():
        for method, operation in item.items():
            ids.append(operation["operationId"])
            statuses = operation["responses"]
            assert any(s[0] in "12" for s in statuses), (method, path)
            for status, answer in statuses.items():
                if status[0] in "45" and "$ref" not in answer and (path, status) not in NOT_ERRORS:
                    schema = answer["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, (method, path, status)
    assert len(ids) == len(set(ids))


def test_the_error_codes_are_the_servers() -> None:
    """The Error schema names every code the API, its middleware and the frames use."""
    codes = set(
        document()["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"][
            "enum"
        ]
    )
    from_server = {code for _, code in api.REFUSALS.values()} | set(_STATUS_CODES.values())
    from_frames = {str(code) for code in ErrorCode} - {"not_member", "token_expired"}
    assert from_server | from_frames | {"timeout", "error"} == codes
