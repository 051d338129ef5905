"""One route, several families: the body's key says which (TEI's `texts`, Infinity's `documents`).

The request model is a tagged union, so OpenAPI documents every body the route takes (`oneOf`)
and FastAPI validates the body against the one family it names. A body with both keys, or with
neither, is a 422 that says so.
"""

from __future__ import annotations

from typing import Annotated, Any, Optional, Union

from pydantic import BeforeValidator, Discriminator, Tag
from pydantic_core import PydanticCustomError

from reranker.api import ApiContext, RerankApi
from reranker.messages import DocScores, PairRequest


class BodyKeys:
    """Which family key a body has: the union's discriminator and its one-key check.

    Apart from BodyKeyDispatch on purpose: the request model holds these methods, and a cycle
    between them and the object holding the model breaks unpickling (Ray ships the app to replicas).
    """

    def __init__(self, keys: list[tuple[str, str, type]]):
        # (key, family name, request model), e.g. ("texts", "TEI", TEIRerankRequest)
        self.keys = keys

    def describe(self) -> str:
        return " or ".join(f"'{key}' ({name})" for key, name, _ in self.keys)

    def check_one_key(self, body: Any) -> Any:
        """Exactly one family key in a JSON object; anything else is left to the family's model to reject."""
        if isinstance(body, dict):
            present = [key for key, _, _ in self.keys if key in body]
            if not present:
                raise PydanticCustomError("body_shape", "The body needs {keys}.", {"keys": self.describe()})
            if len(present) > 1:
                raise PydanticCustomError(
                    "body_shape",
                    "The body has {present}; send only one of {keys}.",
                    {"present": " and ".join(f"'{key}'" for key in present), "keys": self.describe()},
                )
        return body

    def tag(self, body: Any) -> Optional[str]:
        """The family name of a body: the one whose key it has (a JSON object), or whose model it is (an instance)."""
        for key, name, model in self.keys:
            if (isinstance(body, dict) and key in body) or isinstance(body, model):
                return name
        # Not an object: the first family's model says so in its own words.
        return self.keys[0][1]


class BodyKeyDispatch:
    """A RerankApi that hands each body to the family whose key it has."""

    def __init__(self, families: dict[str, tuple[str, RerankApi]], summary: str):
        # key -> (name for messages, family), e.g. {"texts": ("TEI", tei.API)}
        self.summary = summary
        error_families = {api.error_family for _, api in families.values()}
        if len(error_families) != 1:
            raise ValueError(f"The families on one route must share an error body style, not {error_families}")
        self.error_family = error_families.pop()
        self.by_model = {api.request_model: api for _, api in families.values()}
        keys = BodyKeys([(key, name, api.request_model) for key, (name, api) in families.items()])
        # Tagged by family name, not key: FastAPI puts the tag in an error's location, before the field.
        choices = tuple(Annotated[api.request_model, Tag(name)] for name, api in families.values())
        self.request_model = Annotated[
            Union[choices],  # type: ignore[valid-type]
            Discriminator(keys.tag),
            BeforeValidator(keys.check_one_key),
        ]
        self.response_model = Union[tuple(api.response_model for _, api in families.values())]  # type: ignore[valid-type]
        self.tags = frozenset(name for name, _ in families.values())

    def family(self, body: Any) -> RerankApi:
        return self.by_model[type(body)]

    def to_pair_request(self, body: Any, context: ApiContext) -> PairRequest:
        return self.family(body).to_pair_request(body, context)

    def build_response(self, body: Any, request: PairRequest, scores: DocScores, context: ApiContext) -> Any:
        return self.family(body).build_response(body, request, scores, context)
