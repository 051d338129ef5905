# syntax=docker/dockerfile:1
# The reranker on the official Ray image: Ray 2.60.0, Python 3.11 (must match the RayService's
# rayVersion and the project's pin). Dependencies are baked in; nothing uses runtime_env.pip.
#
#   GPU (default, production):
#     docker build -t registry.example.com/ml/reranker:0.1.0 .
#   CPU-only (kind/minikube, small):
#     docker build -t reranker:dev \
#       --build-arg RAY_FLAVOR=cpu \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
#   Model baked in at build time (air-gapped clusters, `docker run`):
#     docker build --build-arg BAKE_MODEL=amberoad/bert-multilingual-passage-reranking-msmarco \
#       [--secret id=hf_token,env=HF_TOKEN] -t ... .
# `gpu` (CUDA) or `cpu`: rayproject/ray:2.60.0-py311-gpu or rayproject/ray:2.60.0-py311-cpu.
ARG RAY_FLAVOR=gpu
FROM rayproject/ray:2.60.0-py311-${RAY_FLAVOR}

# Empty: PyPI, whose torch 2.13.0 for linux x86_64 is the CUDA build (right for -gpu images).
ARG TORCH_INDEX_URL=""
# Hub id of a model to download into HF_HOME at build time; empty bakes nothing.
ARG BAKE_MODEL=""
ARG BAKE_MODEL_REVISION=""

# The Ray image's user is `ray` (uid 1000, gid 100 "users"); everything below runs as it.
USER 1000:100

# RAY_SERVE_QUEUE_LENGTH_RESPONSE_DEADLINE_S: Serve's router gives a replica 0.1 s to report its
# queue length, then backs off from it. Under a spike a busy ingress misses that often enough that
# accepted requests wait seconds in the proxy while the ingress idles (benchmarks/LOAD_REPORT.md).
# RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH: a request whose ingress replica is lost mid-flight (a
# pod gone) gets 503 with Retry-After instead of the proxy's bare 500, and a draining proxy (its
# readiness probe failing) closes keep-alive connections so clients move to a ready pod
# (reranker/proxy.py).
ENV HF_HOME=/home/ray/hf-cache \
    HF_HUB_DISABLE_TELEMETRY=1 \
    RAY_SERVE_QUEUE_LENGTH_RESPONSE_DEADLINE_S=0.5 \
    RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=reranker.proxy:proxy_middlewares \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

# torch first, in its own layer: it is by far the largest and changes least.
RUN PIP_EXTRA_INDEX_URL="$TORCH_INDEX_URL" pip install --no-cache-dir "torch==2.13.0"

# The project (packages `deployments` and `reranker`) and its pinned dependencies.
# .dockerignore keeps tests, benchmarks, k8s/ and virtualenvs out of the context.
COPY --chown=1000:100 . /home/ray/app
WORKDIR /home/ray/app
RUN PIP_EXTRA_INDEX_URL="$TORCH_INDEX_URL" pip install --no-cache-dir "torch==2.13.0" . \
    && python -c "import ray, deployments.app, reranker.proto.tei_pb2_grpc; assert ray.__version__ == '2.60.0', ray.__version__"

# Optional: bake the model into HF_HOME (the Kubernetes manifests use a cache volume instead).
RUN --mount=type=secret,id=hf_token,uid=1000,required=false \
    mkdir -p "$HF_HOME" \
    && if [ -n "$BAKE_MODEL" ]; then \
         HF_TOKEN="$(cat /run/secrets/hf_token 2>/dev/null || true)" \
         python -c "import os; from huggingface_hub import snapshot_download; print(snapshot_download(os.environ['BAKE_MODEL'], revision=os.environ.get('BAKE_MODEL_REVISION') or None, token=os.environ.get('HF_TOKEN') or None, ignore_patterns=['*.h5', '*.msgpack', '*.ot', '*.tflite', 'flax_model*', 'tf_model*', 'rust_model*']))"; \
       fi

# Serve never downloads at run time: the model is baked in or on the mounted HF_HOME volume.
# Set HF_HUB_OFFLINE=0 to let an un-baked image download on first use.
ENV HF_HUB_OFFLINE=1

EXPOSE 8000 9000 8080 8265 6379

# Health: GET /health (liveness) and GET /ready (model loaded) on port 8000; gRPC (TEI's tei.v1.Rerank) on 9000.
# checkov:skip=CKV_DOCKER_2: Kubernetes ignores Docker HEALTHCHECK; KubeRay sets liveness/readiness probes
# Local smoke test: docker run --rm -p 8000:8000 IMAGE (add --gpus all for the GPU image).
CMD ["serve", "run", "/home/ray/app/serve_config.yaml"]
