# CPU worker image (ONNX Runtime CPU, the tiny model baked in). Build context: the repository root.
#   docker build -t seqembed:cpu .
#   docker run --rm seqembed:cpu worker --nats nats://HOST:4222 --model /models/esm2-tiny --device cpu
# docker-compose.yml runs it as service worker-cpu (profile cpu); Dockerfile.gpu is the CUDA image.
FROM golang:1.26-bookworm AS build
# ONNX Runtime's CPU library comes from the npm package onnxruntime-node@1.29.0 (scripts/fetch-ort.sh).
RUN apt-get update && apt-get install -y --no-install-recommends npm && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN go build -trimpath -ldflags='-s -w' -o /out/seqembed ./cmd/seqembed && \
    cp "$(scripts/fetch-ort.sh)" /out/libonnxruntime.so

FROM debian:bookworm-slim
COPY --from=build /out/seqembed /usr/local/bin/seqembed
COPY --from=build /out/libonnxruntime.so /opt/onnxruntime/libonnxruntime.so
# The 2-layer test model (random weights); mount real models over /models or beside it.
COPY testdata/esm2-tiny /models/esm2-tiny
ENV ONNXRUNTIME_SHARED_LIBRARY_PATH=/opt/onnxruntime/libonnxruntime.so
EXPOSE 9090
RUN useradd --system --uid 10001 --no-create-home seqembed
USER seqembed
ENTRYPOINT ["seqembed"]
