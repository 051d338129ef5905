"""Stand-ins for Serve's DeploymentHandle methods and DeploymentResponses, for tier-1 tests of the
ingress's pipeline without Ray."""

from __future__ import annotations

import asyncio

import numpy as np


class FakeResponse:
    """Awaitable like a DeploymentResponse, with cancel()."""

    def __init__(self, value):
        self.value = value
        self.cancelled = False

    def __await__(self):
        async def get():
            return self.value

        return get().__await__()

    def cancel(self):
        self.cancelled = True


class FakeMethod:
    """A handle method: remote() records its arguments and answers fn's value as a FakeResponse,
    or fn's coroutine itself when fn returns one (an answer that comes later)."""

    def __init__(self, fn):
        self.fn = fn
        self.calls = []

    def remote(self, *args):
        self.calls.append(args)
        value = self.fn(*args)
        return value if asyncio.iscoroutine(value) else FakeResponse(value)


class FakeEncoded:
    """A fake tokenizer's answer: the request itself, and pair lengths for the ingress's call sizing."""

    def __init__(self, request, tokens_per_pair: int = 16):
        self.request = request
        self.lengths = np.full(len(request.passages), tokens_per_pair)
