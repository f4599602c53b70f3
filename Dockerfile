# The MC-dropout inference service on CPU torch: docs/deploy.md shows how to build, run, mount or
# bake a model, and deploy it. Needs BuildKit (docker 23+) or podman/buildah. Build arguments:
#   BASE_IMAGE    a Debian-based image with python3 (3.11+) and its venv module
#   WHEELS        "index": torch from TORCH_INDEX_URL (the CPU wheels), the rest from PIP_INDEX_URL;
#                 "local": everything from the folder WHEELHOUSE of the build context, offline
#   UID           the fixed non-root uid (and gid) the service runs as
#   MODEL_DIR     with --target baked: the folder of the build context whose *.safetensors are
#                 copied into /models (the default target has no model: mount one at /models)
ARG BASE_IMAGE=python:3.11-slim
ARG WHEELS=index

# The wheel source is a stage chosen by name, so a default build never needs the wheelhouse in
# its context (BuildKit and buildah skip the stages a build does not use). podman 4.3 (Debian 12)
# resolves the name only from an explicit --build-arg WHEELS=...; the Makefile always passes one.
FROM ${BASE_IMAGE} AS wheels-index
RUN mkdir /wheelhouse

FROM scratch AS wheels-local
ARG WHEELHOUSE=build/wheelhouse
COPY ${WHEELHOUSE}/ /wheelhouse/

# hadolint ignore=DL3006
FROM wheels-${WHEELS} AS wheels

FROM ${BASE_IMAGE} AS build
ARG WHEELS
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_INDEX_URL=https://pypi.org/simple
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
# This stage's pip reads /etc/pip.conf: with WHEELS=local it never looks at an index.
RUN python3 -m venv /opt/venv \
    && if [ "$WHEELS" = local ]; then \
        printf '[global]\nno-index = true\nfind-links = /wheelhouse\n' > /etc/pip.conf; fi
# torch first, on its own: from the CPU index PyPI's CUDA build (several GB) cannot slip in.
# Behind a TLS-intercepting proxy the host's CA bundle comes as the optional secret "cacert".
RUN --mount=type=bind,from=wheels,source=/wheelhouse,target=/wheelhouse \
    --mount=type=secret,id=cacert \
    if [ -f /run/secrets/cacert ]; then export PIP_CERT=/run/secrets/cacert; fi \
    && /opt/venv/bin/pip install --index-url "$TORCH_INDEX_URL" "$TORCH_SPEC"
# Then the dependencies pyproject.toml lists, without the project's code: editing the code rebuilds
# neither this layer nor the runtime's copy of the venv (most of the image). Last, torch's C++
# headers and C++ unit-test executables go: they serve extension builds, not inference (their
# size and the venv's: docs/deploy.md#measured).
COPY pyproject.toml /src/
RUN --mount=type=bind,from=wheels,source=/wheelhouse,target=/wheelhouse \
    --mount=type=secret,id=cacert \
    if [ -f /run/secrets/cacert ]; then export PIP_CERT=/run/secrets/cacert; fi \
    && /opt/venv/bin/python -c "import tomllib; print(*tomllib.load(open('/src/pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
        > /tmp/requirements.txt \
    && /opt/venv/bin/pip install --requirement /tmp/requirements.txt \
    && /opt/venv/bin/python -c "import torch; assert not torch.version.cuda, torch.version.cuda" \
    && rm -r /opt/venv/lib/python3*/site-packages/torch/include \
             /opt/venv/lib/python3*/site-packages/torch/test
# The project alone, into /opt/app (on PYTHONPATH at run time); setuptools builds it.
COPY README.md /src/
COPY models /src/models
COPY training /src/training
COPY service /src/service
RUN --mount=type=bind,from=wheels,source=/wheelhouse,target=/wheelhouse \
    --mount=type=secret,id=cacert \
    if [ -f /run/secrets/cacert ]; then export PIP_CERT=/run/secrets/cacert; fi \
    && /opt/venv/bin/pip install --no-deps --target /opt/app /src

FROM ${BASE_IMAGE} AS runtime
ARG UID=10001
RUN useradd --uid "${UID}" --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin app \
    && mkdir /models
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/app /opt/app
# No .pyc writes (the root filesystem is read-only); logs unbuffered; listen on every interface
# of the container, not its loopback. Every MCDROPOUT_* setting can be overridden at run time.
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONPATH=/opt/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MCDROPOUT_HOST=0.0.0.0 \
    MCDROPOUT_PORT=8000 \
    MCDROPOUT_MODEL_PATH=/models
USER ${UID}:${UID}
EXPOSE 8000
# Healthy means ready: a model is loaded and serving (no curl in slim images: python's urllib,
# past any HTTP_PROXY of the environment).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:%s/health/ready' % os.environ.get('MCDROPOUT_PORT', '8000'), timeout=4)"]
# Exec form: python is PID 1 and gets SIGTERM itself; uvicorn then drains and exits.
CMD ["python", "-m", "service"]

# --target baked: the same image with the checkpoints of MODEL_DIR inside, owned by root and
# read-only to the service.
FROM runtime AS baked
ARG MODEL_DIR=checkpoints
COPY ${MODEL_DIR}/*.safetensors /models/

# The default target: no model inside; mount a folder of checkpoints at /models.
FROM runtime AS mount
