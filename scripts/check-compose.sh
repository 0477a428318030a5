#!/usr/bin/env bash
# check-compose.sh: offline checks of the deployment files; no Docker engine needed.
#   1. docker-compose.yml: `docker compose config -q` (Compose v2) or `docker-compose config -q`
#      (v1; Debian: apt-get install -y docker-compose), with and without each profile; without
#      either, a python3 YAML parse (PyYAML) or, lacking that, a grep for the expected services.
#   2. every local file the compose file and the Dockerfiles refer to exists (./models excepted:
#      it is the user's model volume).
#   3. the Grafana dashboard JSON parses; every seqembed_* metric it uses is defined in
#      telemetry/metrics.go and every label it groups by is one the worker exports.
#   4. prometheus.yml and the Grafana provisioning files parse (if PyYAML is there) and the NATS
#      configs name three distinct servers with routes to all three.
#   5. the NATS image is the nats-server release go.mod requires (the one the tests run against),
#      and every worker creates its streams with --replicas 3 (the cluster has three servers).
#   6. .dockerignore keeps models, data and caches out of the build context.
# Exits non-zero with a message per problem. CHECK_COMPOSE_VALIDATOR=python|grep forces a fallback
# validator (to test the fallbacks where docker compose is installed).
set -uo pipefail
cd "$(dirname "$0")/.."

compose=docker-compose.yml
dashboard=deploy/grafana/dashboards/seqembed.json
metrics=telemetry/metrics.go
profiles=(cpu multi-gpu nats-metrics)
fail=0
problem() { echo "check-compose: FAIL: $*" >&2; fail=1; }
note() { echo "check-compose: $*"; }

[[ -f $compose ]] || { problem "$compose missing"; exit 1; }

# --- 1. compose syntax and schema -------------------------------------------------------------
# Placeholders for variables the file interpolates, so the validators do not warn.
validator=""
force=${CHECK_COMPOSE_VALIDATOR:-auto}
if [[ $force != auto ]]; then
  :
elif docker compose version >/dev/null 2>&1 && docker compose -f "$compose" config -q >/dev/null 2>&1; then
  validator="docker compose"
elif command -v docker-compose >/dev/null 2>&1 && docker-compose version >/dev/null 2>&1; then
  validator="docker-compose"
fi
if [[ -n $validator ]]; then
  note "validator: $validator ($($validator version --short 2>/dev/null || $validator version 2>/dev/null | head -n1))"
  if out=$($validator -f "$compose" config -q 2>&1); then
    note "$validator config -q: ok"
  else
    problem "$validator config -q:"$'\n'"$out"
  fi
  for p in "${profiles[@]}"; do
    if out=$($validator -f "$compose" --profile "$p" config -q 2>&1); then
      note "$validator --profile $p config -q: ok"
    else
      problem "$validator --profile $p config -q:"$'\n'"$out"
    fi
  done
  services=$($validator -f "$compose" --profile cpu --profile multi-gpu --profile nats-metrics config --services 2>/dev/null)
elif [[ $force != grep ]] && python3 -c 'import yaml' 2>/dev/null; then
  validator="python3 yaml (structure only; no Compose schema check)"
  note "validator: $validator"
  services=$(python3 - "$compose" <<'PY'
import sys, yaml
d = yaml.safe_load(open(sys.argv[1]))
assert isinstance(d, dict) and isinstance(d.get("services"), dict), "no services mapping"
for name, s in d["services"].items():
    assert isinstance(s, dict), f"service {name} is not a mapping"
    assert "image" in s or "build" in s, f"service {name} has neither image nor build"
    print(name)
PY
) || problem "python3 could not parse $compose as a compose file"
else
  validator="grep (minimal structural check)"
  note "validator: $validator"
  services=$(grep -E '^  [a-z0-9-]+:$' "$compose" | tr -d ' :')
  grep -q $'\t' "$compose" && problem "$compose contains tab characters (invalid YAML indentation)"
fi
if [[ -z ${services:-} ]]; then
  problem "could not list the services of $compose"
else
  for s in nats-1 nats-2 nats-3 worker worker-cpu prometheus grafana; do
    grep -qx "$s" <<<"$services" || problem "service $s not found in $compose"
  done
fi

# --- 2. referenced files ----------------------------------------------------------------------
# Host paths of bind mounts and build contexts/Dockerfiles.
while read -r path; do
  [[ $path == ./models ]] && continue
  [[ -e $path ]] || problem "$compose refers to $path, which does not exist"
done < <(grep -oE '(^|[ "[-])\./[A-Za-z0-9_./-]*' "$compose" | sed -E 's/^[ "[-]*//; s/:.*//' | sort -u)
while read -r df; do
  [[ -f $df ]] || problem "$compose builds from $df, which does not exist"
done < <(grep -E '^\s*dockerfile:' "$compose" | awk '{print $2}' | tr -d '"' | sort -u)
for df in Dockerfile Dockerfile.gpu; do
  [[ -f $df ]] || { problem "$df missing"; continue; }
  # COPY sources from the build context (not --from stages) must exist.
  while read -r src; do
    [[ $src == . || -e $src ]] || problem "$df: COPY source $src does not exist"
  done < <(grep -E '^COPY ' "$df" | grep -v -- '--from' | awk '{for (i = 2; i < NF; i++) print $i}')
  while read -r script; do
    [[ -x $script ]] || problem "$df runs $script, which is missing or not executable"
  done < <(grep -oE 'scripts/[A-Za-z0-9_.-]+' "$df" | sort -u)
done
grep -q 'ENTRYPOINT \["seqembed"\]' Dockerfile.gpu || problem "Dockerfile.gpu: ENTRYPOINT [\"seqembed\"] missing"
grep -q 'ONNXRUNTIME_SHARED_LIBRARY_PATH' Dockerfile.gpu || problem "Dockerfile.gpu: ONNXRUNTIME_SHARED_LIBRARY_PATH not set"

# --- 3. dashboard -----------------------------------------------------------------------------
if [[ ! -f $dashboard ]]; then
  problem "$dashboard missing"
elif ! python3 -m json.tool "$dashboard" >/dev/null 2>&1; then
  problem "$dashboard is not valid JSON: $(python3 -m json.tool "$dashboard" 2>&1 >/dev/null | tail -n1)"
else
  note "$dashboard: valid JSON"
  n=0
  for m in $(grep -oE 'seqembed_[a-z0-9_]+' "$dashboard" | sort -u); do
    name=${m#seqembed_}
    n=$((n + 1))
    if grep -q "\"$name\"" "$metrics"; then continue; fi
    base=$(sed -E 's/_(bucket|sum|count)$//' <<<"$name")
    if [[ $base != "$name" ]] && grep -qE "histogram\(\"$base\"" "$metrics"; then continue; fi
    problem "$dashboard uses $m, which $metrics does not define"
  done
  note "$n seqembed_* names in the dashboard checked against $metrics"
  # Labels in `by (...)` / `without (...)`: the worker's (model, reason, gpu), Prometheus' target
  # labels (instance, job) and histogram buckets (le).
  for l in $(grep -oE '(by|without) \([^)]*\)' "$dashboard" | sed -E 's/.*\(//; s/\)//; s/,/ /g' | tr ' ' '\n' | sort -u); do
    case $l in model|reason|gpu|instance|job|le) ;; *) problem "$dashboard groups by label $l, which no seqembed metric has";; esac
  done
  uid=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["uid"])' "$dashboard" 2>/dev/null)
  [[ -n $uid ]] || problem "$dashboard has no uid"
  grep -q 'uid: prometheus' deploy/grafana/provisioning/datasources/*.yml 2>/dev/null ||
    problem "no Grafana datasource with uid prometheus (the dashboard's datasource) in deploy/grafana/provisioning/datasources"
fi

# --- 4. other config files --------------------------------------------------------------------
for f in deploy/prometheus.yml deploy/grafana/provisioning/datasources/*.yml deploy/grafana/provisioning/dashboards/*.yml; do
  [[ -f $f ]] || { problem "$f missing"; continue; }
  if python3 -c 'import yaml' 2>/dev/null; then
    python3 -c 'import sys, yaml; yaml.safe_load(open(sys.argv[1]))' "$f" 2>/dev/null || problem "$f is not valid YAML"
  fi
done
grep -q 'dns_sd_configs' deploy/prometheus.yml || problem "deploy/prometheus.yml: no dns_sd_configs for the workers"
grep -qE '"worker"|tasks\.worker' deploy/prometheus.yml || problem "deploy/prometheus.yml does not look up the worker service"
grep -q '/etc/grafana/dashboards' deploy/grafana/provisioning/dashboards/*.yml ||
  problem "Grafana dashboard provider does not load /etc/grafana/dashboards (where $compose mounts the dashboards)"
for i in 1 2 3; do
  f=deploy/nats/nats-$i.conf
  [[ -f $f ]] || { problem "$f missing"; continue; }
  grep -qE "^server_name: nats-$i$" "$f" || problem "$f: server_name is not nats-$i"
  grep -q 'jetstream' "$f" || problem "$f: no jetstream block"
  for j in 1 2 3; do
    grep -q "nats-route://nats-$j:6222" "$f" || problem "$f: no route to nats-$j"
  done
done
if command -v nats-server >/dev/null 2>&1; then
  for f in deploy/nats/nats-*.conf; do
    nats-server -c "$f" -t >/dev/null 2>&1 || problem "nats-server -t rejects $f"
  done
else
  note "nats-server not installed: NATS configs checked by grep only"
fi
if command -v promtool >/dev/null 2>&1; then
  promtool check config deploy/prometheus.yml >/dev/null || problem "promtool rejects deploy/prometheus.yml"
else
  note "promtool not installed: prometheus.yml checked as YAML only"
fi

# --- 5. NATS release, stream replicas ---------------------------------------------------------
nats_version=$(awk '$1 == "github.com/nats-io/nats-server/v2" {sub(/^v/, "", $2); print $2}' go.mod | head -n1)
if [[ -z $nats_version ]]; then
  problem "go.mod does not require github.com/nats-io/nats-server/v2"
else
  images=$(grep -E '^\s*image:\s*"?nats:' "$compose" | sed -E 's/^\s*image:\s*"?//; s/"?\s*$//' | sort -u)
  [[ -n $images ]] || problem "$compose: no nats:<tag> image"
  for img in $images; do
    [[ $img == "nats:$nats_version" ]] || problem "$compose runs $img; pin nats:$nats_version (go.mod's nats-server, what the tests run against)"
  done
  note "NATS image pinned to nats:$nats_version (go.mod)"
fi
# Each worker command (a YAML list starting with `- worker`) must carry `--replicas` then 3.
awk '
  /^[[:space:]]*command:[[:space:]]*$/ { incmd = 1; first = 1; worker = 0; rep = 0; prev = ""; next }
  incmd && /^[[:space:]]*- / {
    v = $0; sub(/^[[:space:]]*- /, "", v); gsub(/"/, "", v)
    if (first) { worker = (v == "worker"); first = 0 }
    if (prev == "--replicas" && v == "3") rep = 1
    if (v == "--replicas=3") rep = 1
    prev = v; next
  }
  incmd { if (worker && !rep) { bad++; print "line " NR ": worker command without --replicas 3" > "/dev/stderr" } ; incmd = 0; workers += worker }
  END { if (!workers) { print "no worker command found" > "/dev/stderr"; exit 1 } ; exit bad > 0 }
' "$compose" || problem "$compose: every worker needs --replicas 3 (streams R3 on the 3-node cluster)"

# --- 6. build context -------------------------------------------------------------------------
for p in models out bench-data .device .device2 .cache; do
  grep -qxE "/?$p/?" .dockerignore 2>/dev/null || problem ".dockerignore does not exclude $p"
done

if ((fail)); then
  echo "check-compose: problems found (validator: $validator)" >&2
  exit 1
fi
note "all checks passed (validator: $validator)"
