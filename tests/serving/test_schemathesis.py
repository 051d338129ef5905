"""Property-based API testing with schemathesis against the app's own OpenAPI document, every route.

Each operation gets a bounded number of generated requests (valid and invalid ones). Every response
must be a declared status, match its declared schema and content type, and never be a 5xx.

All of schemathesis's checks run. One is configured: `positive_data_acceptance` also accepts the
documented 400, 413 and 422 for schema-valid requests, because those answer rules JSON Schema cannot
state here: a whitespace-only query (400), limits that are settings (413), null bytes, unpaired
surrogates, an unknown model name, both `pairs` and `queries` in /score (422). Each of these is
declared in the operation's responses, with its body schema, and checked against it.

The schema comes from the ingress's FastAPI app at import time (schemathesis 4's lazy
`from_fixture` loader does not work with pytest 9), and a test checks it is exactly what the
running app serves at /openapi.json.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from deployments.ingress import build_routes
from reranker.server import create_app
from reranker.settings import load_settings

pytestmark = [pytest.mark.serving, pytest.mark.slow]

MAX_EXAMPLES = 20
# Generous: a guard against hangs, not a latency check.
REQUEST_TIMEOUT_S = 30
# The app as the builder makes it, for the settings the session's app is deployed with.
OPENAPI = build_routes(create_app(load_settings())).openapi()

SEMANTIC_REJECTIONS = ["400", "413", "422"]
CONFIG = SchemathesisConfig.from_dict(
    {"checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", *SEMANTIC_REJECTIONS]}}}
)
schema = schemathesis.openapi.from_dict(OPENAPI, config=CONFIG)


@pytest.mark.timeout(60)
def test_served_openapi_is_the_tested_one(http):
    assert http.get("/openapi.json").json() == OPENAPI


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
)
@pytest.mark.timeout(90)
def test_every_route_conforms_to_its_openapi(case, serve_cluster):
    case.call_and_validate(base_url=serve_cluster.url, timeout=REQUEST_TIMEOUT_S)
