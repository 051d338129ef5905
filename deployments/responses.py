"""Pure request and response helpers of the ingress: ranking order, Cohere documents, /score pairs."""

from __future__ import annotations

import json
import re
from typing import Optional

import numpy as np

from deployments.errors import EmptyInputError, ValidationError
from deployments.schemas import ScoreRequest


def ranking(scores: np.ndarray, top_n: Optional[int]) -> np.ndarray:
    """Indices by descending score, ties by ascending index, cut to top_n."""
    order = np.lexsort((np.arange(len(scores)), -scores.astype(np.float64)))
    return order[:top_n] if top_n else order


def truncation_header(truncated: bool) -> Optional[dict]:
    return {"X-Reranker-Query-Truncated": "true"} if truncated else None


def document_text(document, rank_fields: Optional[list[str]], index: int) -> str:
    """A Cohere document as text: a string, its `text`, or its `rank_fields` as 'key: value' lines."""
    if isinstance(document, str):
        return document
    if rank_fields:
        lines = []
        for field in rank_fields:
            if field not in document:
                raise ValidationError(f"Document {index} has no field '{field[:100]}' named in rank_fields.")
            value = document[field]
            lines.append(f"{field}: {value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)}")
        return "\n".join(lines)
    text = document.get("text")
    if not isinstance(text, str):
        raise ValidationError(f"Document {index} is an object without a string 'text' field (or set rank_fields).")
    return text


def score_request_pairs(body: ScoreRequest) -> tuple[list[str], list[str]]:
    if body.pairs is not None:
        if body.queries is not None or body.documents is not None:
            raise ValidationError("Send either 'pairs' or 'queries' and 'documents', not both.")
        for index, pair in enumerate(body.pairs):
            if len(pair) != 2:
                raise ValidationError(f"Pair {index} must be [query, passage].")
        return [p[0] for p in body.pairs], [p[1] for p in body.pairs]
    if body.queries is None or body.documents is None:
        raise EmptyInputError("Send 'pairs', or 'queries' and 'documents'.")
    if len(body.queries) != len(body.documents):
        raise ValidationError(f"{len(body.queries)} queries but {len(body.documents)} documents; they pair one to one.")
    if not body.queries:
        raise EmptyInputError("No pairs to score.")
    return list(body.queries), list(body.documents)


EXCEPTION_LINE = re.compile(r"^\s*(?:[\w]+\.)*(\w+(?:Error|Exception)): (.+)$")


def last_exception_line(message: str, limit: int = 600) -> str:
    """The final 'SomeError: text' line of a Serve status message (a traceback), module path dropped."""
    matches = [EXCEPTION_LINE.match(line) for line in message.splitlines()]
    found = [m for m in matches if m]
    if not found:
        return message.strip()[-limit:]
    name, text = found[-1].groups()
    return f"{name}: {text.strip()}"[:limit]
