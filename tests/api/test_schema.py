"""Schemathesis over the app's own OpenAPI document: no generated request gets a 5xx."""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from chatd.api.app import create_app
from chatd.config import Settings

# The document is the app's own; building the app opens nothing, so it is read at import.
schema = schemathesis.openapi.from_dict(
    create_app(Settings(_env_file=None, provider="demo")).openapi()  # type: ignore[call-arg]
)


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
)
def test_no_input_gets_a_server_error(case: Any, server: Any) -> None:
    case.call_and_validate(
        base_url=server.url,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
        timeout=30,
    )
