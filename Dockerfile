# The service image: Ray head + Serve app (deployments.app:build_app), CPU only.
# resnet50 weights are fetched and sha256-checked at build time, so the running service needs
# no network access to start:
#   docker-compose build   (reads RESNET50_WEIGHTS_URL / RESNET50_WEIGHTS_SHA256 from .env)
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # glibc would map/unmap every >32 MB activation buffer (half the time in the kernel).
    MALLOC_MMAP_MAX_=0 \
    MALLOC_TRIM_THRESHOLD_=100000000000 \
    RAY_USAGE_STATS_ENABLED=0 \
    # The proxy's body limits (deployments.admission): `image-search serve` sets this for a
    # local Ray, but here `ray start` starts the proxy, so the image must set it itself.
    RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=deployments.admission.proxy_middlewares \
    # Serve's transport between its processes (deployments.cluster.SERVE_TRANSPORT_ENV), for
    # the same reason.
    RAY_SERVE_USE_GRPC_BY_DEFAULT=1 \
    RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH=2147483647 \
    ISE_CONFIG=/app/config.yaml

WORKDIR /app

# CPU wheels first: the default index would pull the CUDA build (gigabytes) on Linux.
RUN pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu

# Dependencies change less often than code: install the project in its own layer.
COPY pyproject.toml README.md ./
COPY image_search ./image_search
COPY deployments ./deployments
COPY pipelines ./pipelines
COPY cli ./cli
RUN pip install . && python -c "import deployments.app, pymysql, minio, pymilvus"
COPY config.yaml serve_config.yaml ./

# Weights: the project's own fetcher (download, sha256 check, atomic rename) fills the cache
# that the service reads at runtime (ISE__MODEL__CACHE_DIR, same URL and sha256).
ARG RESNET50_WEIGHTS_URL=http://cmp.felk.cvut.cz/cnnimageretrieval/data/networks/gl18/gl18-tl-resnet50-gem-w-83fdc30.pth
ARG RESNET50_WEIGHTS_SHA256=
RUN test -n "$RESNET50_WEIGHTS_SHA256" || { \
      echo "set RESNET50_WEIGHTS_SHA256 (in .env, or --build-arg) to the sha256 of the weights you trust" >&2; \
      exit 1; } \
 && python -c "import sys; from image_search.embedding.weights import fetch_weights; \
print(fetch_weights(sys.argv[1], sys.argv[2], '/opt/ise/models', timeout_s=600))" \
      "$RESNET50_WEIGHTS_URL" "$RESNET50_WEIGHTS_SHA256"
# The ONNX fp32 graph the service runs (auto gives resnet50 onnx fp32 until its int8 or bf16
# is gated; runtime openvino compiles the same file), built here because the cache is
# read-only at runtime.
RUN ISE__MODEL__NAME=resnet50 ISE__MODEL__WEIGHTS="$RESNET50_WEIGHTS_URL" \
    ISE__MODEL__WEIGHTS_SHA256="$RESNET50_WEIGHTS_SHA256" ISE__MODEL__CACHE_DIR=/opt/ise/models \
    python -c "from image_search.config import load_settings; \
from image_search.embedding import model_card; \
from image_search.embedding.onnx_runtime import ensure_graph; \
m = load_settings().model; print(ensure_graph(m, model_card(m.name), 'fp32'))" \
 && chmod -R a+rX /opt/ise/models

RUN useradd --create-home --uid 1000 ise && mkdir -p /var/lib/ise && chown ise /var/lib/ise
USER ise

EXPOSE 8000 8265
# Serve's HTTP proxy must listen on all interfaces inside the container (serve_config.yaml
# says 127.0.0.1 for a laptop), so Serve is started with its HTTP options before `serve run`
# deploys the config; `serve run` stays in the foreground and streams the logs.
CMD ["bash", "-c", "ray start --head --port=6379 --dashboard-host=0.0.0.0 --dashboard-port=8265 --num-cpus=${RAY_NUM_CPUS:-4} --disable-usage-stats && serve start --http-host=0.0.0.0 --http-port=8000 --proxy-location=HeadOnly && exec serve run --address=auto serve_config.yaml"]
