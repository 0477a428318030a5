# CPU worker image. Build context: the repository root.
FROM golang:1.26-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends npm && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN go build -trimpath -ldflags='-s -w' -o /out/seqembed ./cmd/seqembed && \
    cp "$(scripts/fetch-ort.sh)" /out/libonnxruntime.so

FROM debian:bookworm-slim
COPY --from=build /out/seqembed /usr/local/bin/seqembed
COPY --from=build /out/libonnxruntime.so /opt/onnxruntime/libonnxruntime.so
COPY testdata/esm2-tiny /models/esm2-tiny
ENV ONNXRUNTIME_SHARED_LIBRARY_PATH=/opt/onnxruntime/libonnxruntime.so
ENTRYPOINT ["seqembed"]
