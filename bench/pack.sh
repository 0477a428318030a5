#!/usr/bin/env bash
# bench/pack.sh — run HERE (the dev machine, with Go): fills .device/ with what bench/gpu.sh needs on
# the GPU machine, which has no Go and no network:
#   stripped binaries seqembed and gpurun.test (GPU parity), xz-compressed, with ONNX Runtime 1.29's
#   CUDA build and on-device.sh (../shared/tools/device-pack); .device/db8000.fasta.xz (the
#   8,000 real proteins of `make bench-data`); .device/build.json (commit, dirty tree, build date,
#   Go version, tags), which gpu.sh writes into every result row since .git does not travel.
# Then prints what the device call will send (the limit is 64 MiB for everything that travels).
#
#   bench/pack.sh                      # then: run with carry [".device"] (bench/README.md)
# Environment: BUILD_TAGS (build tags for go build and go test -c, when set), TEST_PKGS (the
# packages built as NAME.test, default gpurun; e.g. "gpurun pipeline"), NO_TESTS=1 (none),
# NO_DATA=1 (no db8000.fasta.xz: for parity-only calls), DATA_RECORDS=N (only the first N records,
# as dbN.fasta.xz), CUDNN_FRONTEND=DIR (a cudnn-frontend checkout or bare clone: its include/ as
# .device/cudnn-fe-include.tar.xz, ~0.3 MiB, for gpu.sh's attnop=cudnn), DEVICE_DIR (default .device),
# DEVICE_PACK (default ../shared/tools/device-pack).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
dev=${DEVICE_DIR:-.device}
pack=${DEVICE_PACK:-$root/../shared/tools/device-pack}
tags=${BUILD_TAGS:-}
export GOTOOLCHAIN=${GOTOOLCHAIN:-auto}
export CGO_CFLAGS=${CGO_CFLAGS:--O2 -g -Wno-deprecated-declarations}
[[ -x $pack ]] || {
  echo "pack.sh: no device-pack at $pack (set DEVICE_PACK)" >&2
  exit 1
}
tagargs=()
[[ -n $tags ]] && tagargs=(-tags "$tags")

bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
echo "pack.sh: go build ./cmd/seqembed${tags:+ (tags $tags)}"
go build -trimpath -ldflags='-s -w' "${tagargs[@]}" -o "$bin/seqembed" ./cmd/seqembed
files=("$bin/seqembed")
if [[ -z ${NO_TESTS:-} ]]; then
  for pkg in ${TEST_PKGS:-gpurun}; do
    echo "pack.sh: go test -c ./$pkg"
    go test -c -trimpath -ldflags='-s -w' "${tagargs[@]}" -o "$bin/$(basename "$pkg").test" "./$pkg"
    files+=("$bin/$(basename "$pkg").test")
  done
fi

# The real-protein subset: bench-data/db8000.fasta.xz (make bench-data fetches it once).
mkdir -p "$dev"
# DATA_RECORDS=N carries only the first N records as $dev/dbN.fasta.xz (give gpu.sh --fasta it):
# room for seqembed beside gpurun.test and a larger tree (2,000 records: 0.5 MiB instead of 1.6).
rm -f "$dev"/db[0-9]*.fasta.xz "$dev"/cudnn-fe-include.tar.xz
if [[ -n ${CUDNN_FRONTEND:-} ]]; then
  if [[ -f $CUDNN_FRONTEND/include/cudnn_frontend.h ]]; then
    tar -C "$CUDNN_FRONTEND" -cf - include | xz -9 >"$dev/cudnn-fe-include.tar.xz"
  elif git --git-dir="$CUDNN_FRONTEND" cat-file -e HEAD:include/cudnn_frontend.h 2>/dev/null; then
    git --git-dir="$CUDNN_FRONTEND" archive HEAD include | xz -9 >"$dev/cudnn-fe-include.tar.xz" # a bare clone
  else
    echo "pack.sh: no include/cudnn_frontend.h in $CUDNN_FRONTEND (a checkout or a bare clone)" >&2 && exit 1
  fi
fi
if [[ -z ${NO_DATA:-} ]]; then
  [[ -s bench-data/db8000.fasta.xz ]] || scripts/bench-data.sh bench-data
  if [[ -n ${DATA_RECORDS:-} ]]; then
    [[ $DATA_RECORDS =~ ^[0-9]+$ ]] || { echo "pack.sh: DATA_RECORDS wants a record count" >&2; exit 1; }
    xz -dc bench-data/db8000.fasta.xz | awk -v n="$DATA_RECORDS" '/^>/{k++} k<=n' | # reads to the end: no SIGPIPE
      xz -9 >"$dev/db$DATA_RECORDS.fasta.xz"
  else
    cp bench-data/db8000.fasta.xz "$dev/db8000.fasta.xz"
  fi
fi

"$pack" "$dev" "${files[@]}"

ingit=0
git rev-parse --git-dir >/dev/null 2>&1 && ingit=1
commit=unknown dirty=false changed=0
if ((ingit)); then
  commit=$(git rev-parse HEAD)
  changed=$(git status --porcelain --untracked-files=no | wc -l)
  ((changed == 0)) || dirty=true
fi
python3 - "$dev/build.json" "$commit" "$dirty" "$changed" "$tags" "$(go env GOVERSION)" <<'PY'
import datetime, json, sys
path, commit, dirty, changed, tags, gover = sys.argv[1:]
json.dump({"commit": commit, "dirty": dirty == "true", "changed_files": int(changed), "tags": tags,
           "go": gover, "built": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")},
          open(path, "w"))
PY
echo "pack.sh: $dev/build.json: commit $commit$([[ $dirty == true ]] && echo " + $changed changed tracked files (dirty)")"

# What the device call sends: tracked and untracked-not-ignored files, plus the carried .device.
tree=0
if ((ingit)); then
  tree=$(git ls-files -z --cached --others --exclude-standard | python3 -c '
import os, sys
print(sum(os.lstat(p).st_size for p in sys.stdin.buffer.read().split(b"\0") if p and os.path.lexists(p)))')
fi
carried=$(du -sb "$dev" | cut -f1)
total=$(((tree + carried) / 1024 / 1024))
echo "pack.sh: the call sends about $total MiB ($((tree / 1024 / 1024)) MiB of tree + $((carried / 1024 / 1024)) MiB of $dev) of the 64 MiB allowed"
du -b "$dev"/*.xz "$dev"/files/*.xz | sed 's/^/  /'
# The device tool counted a little more than this sum: a call of 63.8 MiB was refused, 63.75 MiB
# went (2026-12-02). Keep a margin.
if ((tree + carried > 64 * 1024 * 1024 - 384 * 1024)); then
  echo "pack.sh: over (or within 384 KiB of) the 64 MiB limit: NO_TESTS=1 (no gpurun.test, so no parity" \
    "mode: -1.5 MiB), DATA_RECORDS=2000 (-1.1 MiB) or NO_DATA=1 (no data: -1.6 MiB) makes it smaller" >&2
  exit 1
fi
echo "pack.sh: ready; on the GPU machine (carry .device): bash .device/on-device.sh bash bench/gpu.sh -f MATRIX"
