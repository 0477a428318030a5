#!/usr/bin/env bash
# bench-data.sh: writes bench-data/db20000.fasta.gz (DB.fasta from Debian's mmseqs2-examples:
# 20,000 UniProt proteins) and bench-data/db8000.fasta.xz (its first 8,000 records, small
# enough to travel to the GPU machine).
set -euo pipefail
out=${1:-bench-data}
mkdir -p "$out"
[[ -s $out/db8000.fasta.xz && -s $out/db20000.fasta.gz ]] && exit 0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && { apt-get download mmseqs2-examples >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get download mmseqs2-examples >/dev/null; }; })
dpkg -x "$work"/mmseqs2-examples_*.deb "$work/x"
cp "$work/x/usr/share/doc/mmseqs2/example-data/DB.fasta.gz" "$out/db20000.fasta.gz"
(zcat "$out/db20000.fasta.gz" || true) | awk '/^>/{n++} n>8000{exit} {print}' | xz -9 >"$out/db8000.fasta.xz"
echo "bench-data: $(zcat "$out/db20000.fasta.gz" | grep -c '>') records in $out/db20000.fasta.gz, $(xzcat "$out/db8000.fasta.xz" | grep -c '>') in $out/db8000.fasta.xz ($(du -h "$out/db8000.fasta.xz" | cut -f1))"
