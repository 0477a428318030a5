#!/usr/bin/env bash
# govulncheck over the module, against the Go vulnerability database built locally from the
# golang.org/x/vulndb module (data/osv, served by the Go module proxy like any module), because
# vuln.go.dev itself may be unreachable (it is from the development machines). The newest vulndb
# snapshot is used; the built database is cached under ~/.cache/seqembed/vulndb/<version>.
# Exit status: govulncheck's (3 = vulnerable code is called).
set -euo pipefail
cd "$(dirname "$0")/.."
govulncheck=golang.org/x/vuln/cmd/govulncheck@v1.9.0
cache=${XDG_CACHE_HOME:-$HOME/.cache}/seqembed/vulndb
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Module queries outside this module, so go.mod and go.sum stay as they are.
field() { sed -n "s/.*\"$1\": \"\(.*\)\".*/\1/p"; }
ver=$(cd "$tmp" && go list -m -json golang.org/x/vulndb@latest | field Version)
db=$cache/$ver
if [[ ! -s $db/index/db.json ]]; then
  src=$(cd "$tmp" && go mod download -json "golang.org/x/vulndb@$ver" | field Dir)
  rm -rf "$db.part"
  mkdir -p "$cache"
  (cd "$tmp" && go run "golang.org/x/vulndb/cmd/indexdb@$ver" -vulns "$src/data/osv" -out "$db.part")
  mv "$db.part" "$db"
fi
echo "govulncheck: database golang.org/x/vulndb@$ver ($(ls "$db/ID" | wc -l) entries), $(go version)"
go run "$govulncheck" -db "file://$db" ./...
