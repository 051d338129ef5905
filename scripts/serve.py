"""`serve run` without Ray's dashboard: the single-machine Run command of README.md.

    python scripts/serve.py serve_config.yaml        # any `serve run` arguments

`serve run` starts a local Ray with the full dashboard: nine module processes, a forkserver and a
resource tracker (about 240 MiB of PSS, and about 15 s more to start on 2 cores) that serving does
not use (`/metrics` reads the node's metrics agent, which runs either way). This starts the local
Ray without them (and with the proxy middleware the image sets, reranker/proxy.py), then hands
every argument to Serve's own `serve run`, which reuses a Ray that is already initialized. With
`--address` or RAY_ADDRESS (an existing cluster) it starts nothing and `serve run` connects there.
Ctrl-C stops the application and the local Ray, as with `serve run`.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    import ray
    from ray.serve._private.constants import SERVE_NAMESPACE
    from ray.serve.scripts import cli

    joins_a_cluster = bool(os.environ.get("RAY_ADDRESS")) or any(
        arg in ("--address", "-a") or arg.startswith("--address=") for arg in argv
    )
    if not joins_a_cluster:
        # As the image does: a request whose ingress replica is lost mid-flight gets 503 with
        # Retry-After, not the proxy's bare 500 (reranker/proxy.py). The local Ray's processes,
        # the proxy among them, inherit this environment.
        os.environ.setdefault("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", "reranker.proxy:proxy_middlewares")
        ray.init(address="local", include_dashboard=False, namespace=SERVE_NAMESPACE)
    return cli.main(["run", *argv], prog_name="serve")


if __name__ == "__main__":
    sys.exit(main())
