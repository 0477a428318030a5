#!/usr/bin/env bash
# fetch-ort.sh: prints the path of ONNX Runtime 1.29.0's CPU shared library (linux/x64), fetching
# it once from the npm registry package onnxruntime-node@1.29.0 into ~/.cache/seqembed/.
# Needs npm and tar; nothing else is downloaded.
set -euo pipefail
ver=1.29.0
cache=${XDG_CACHE_HOME:-$HOME/.cache}/seqembed/onnxruntime-$ver
lib=$cache/libonnxruntime.so
if [[ ! -s $lib ]]; then
  command -v npm >/dev/null || { echo "fetch-ort: npm is needed to fetch onnxruntime-node@$ver" >&2; exit 1; }
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  echo "fetch-ort: fetching onnxruntime-node@$ver from the npm registry" >&2
  (cd "$work" && npm pack --silent "onnxruntime-node@$ver" >/dev/null)
  tar xzf "$work/onnxruntime-node-$ver.tgz" -C "$work" package/bin/napi-v6/linux/x64/libonnxruntime.so.1
  mkdir -p "$cache"
  cp "$work/package/bin/napi-v6/linux/x64/libonnxruntime.so.1" "$lib.part"
  mv "$lib.part" "$lib"
fi
echo "$lib"
