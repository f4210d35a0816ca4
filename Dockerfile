# bnfuse in a container:
#   docker build -t bnfuse .
#   docker run --rm -v "$PWD:/models" bnfuse fold model.prototxt model.caffemodel --verify

# Stage 1: build the wheel from the source tree.
FROM python:3.12-slim AS builder
WORKDIR /src
RUN python -m pip install --no-cache-dir --upgrade pip build
COPY pyproject.toml README.md MANIFEST.in ./
COPY bnfuse ./bnfuse
RUN python -m build --wheel --outdir /dist .

# Stage 2: only the wheel and its runtime dependencies (numpy, protobuf).
FROM python:3.12-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=builder /dist/*.whl /tmp/
RUN python -m pip install --no-cache-dir /tmp/*.whl \
    && rm /tmp/*.whl \
    && useradd --create-home --uid 1000 bnfuse \
    && mkdir /models \
    && chown bnfuse:bnfuse /models
USER bnfuse
WORKDIR /models
ENTRYPOINT ["bnfuse"]
CMD ["--help"]
