#!/usr/bin/env bash
# bench/gpu.sh — the GPU-machine benchmark harness: models × exports × modes, from matrix lines
# given as arguments or in matrix files (bench/README.md describes the format). Each model is
# exported once (tools/export_esm2.py, random weights of the real architecture), each mode is run
# (seqembed bench e2e / raw, PyTorch eager / torch.compile, GPU parity, Nsight Compute profile),
# and one JSON object per measurement is appended to OUT/results.jsonl. Step logs go to
# OUT/logs/steps.log, the closing table to stdout and OUT/summary.txt.
#
#   bash .device/on-device.sh bash bench/gpu.sh -f bench/matrix/recheck.txt --budget 540
#   bash bench/gpu.sh -n 'model=650M export=packed modes=e2e,torch'      # print the plan only
#
# A failing step is reported (the command, its exit status, the end of its log) and recorded as a
# "failed" row; the other steps still run (--fail-fast stops instead) and the exit status is 1.
set -Eeuo pipefail

usage() {
  cat <<'EOF'
usage: bench/gpu.sh [options] [-f MATRIX]... [LINE]...
  LINE            a matrix line, e.g. 'model=8M export=mha modes=e2e,raw,torch,torch-compile'
  -f, --matrix F  read matrix lines from F ('#' comments; 'set key=value...' sets defaults)
  -n, --dry-run   check the lines and print the plan (every command), run nothing
  --out DIR       results folder (default $OUT, else ./out/bench)
  --work DIR      models and data (default ${TMPDIR:-/tmp}/seqembed-bench); an export whose
                  command matches the one recorded there is reused
  --fasta F       input FASTA, plain, .gz or .xz (default .device/db8000.fasta.xz, else
                  bench-data/db8000.fasta.xz)
  --device D      seqembed --device (default cuda:0)
  --budget S      finish within S seconds: steps get at most the time left, later ones are
                  recorded as skipped (the table still prints)
  --fail-fast     stop at the first failed step
  --build-info F  build.json written by bench/pack.sh (default .device/build.json)
Keys of a line: model= (8M 35M 150M 650M 3B tiny, or a preset t33_650M; required),
  export= mha|packed|auto|traced|optimized|dir:PATH (default auto), ops=custom|none (default
  custom for fused fp16 exports), dtype=fp16|fp32, precision=fp16|fp8|fp8-ffn (fp8: FP8 projections,
  fp8-ffn: only the FFN's; packed or mha fp16 exports with the custom ops; torch rows stay fp16), gelu=erf|tanh (tanh:
  export --fused-gelu, the FFN's GELU as the tanh approximation; packed or mha, custom ops: with precision fp16 fc1 with
  cuBLASLt's bias+GELU epilogue, with fp8 and fp8-ffn computed in the QuantizeE4M3 of fc1's output), linear=ort|lt|lt-res (lt: export --fp16-linear, every fp16
  projection as ai.seqembed.Fp16Linear; lt-res: also --fused-residual, the residual added in the GEMM), lnq=0|1 (1: export
  --fused-ln-quant, precision fp8: residual + LayerNorm + E4M3 quantisation as one op), attnop=ort|cudnn (cudnn: export
  --cudnn-attention, attention as ai.seqembed.RaggedAttention on cuDNN; the ops are then built with cuDNN from
  $SEQEMBED_OPS_CUDNN or the nvidia-cudnn wheel and cudnn-frontend from $SEQEMBED_CUDNN_FRONTEND or
  .device/cudnn-fe-include.tar.xz, bench/pack.sh CUDNN_FRONTEND=DIR), outliers=SIGMA (heavy-tailed
  channels, export --outlier-channels), layout=rows|sequence, check=1|0,
  modes= e2e,raw,torch,torch-compile,parity,precision,profile,gemm,attn (default e2e,raw,torch,torch-compile;
  precision: seqembed check-precision against float32 PyTorch on the first golden=N records,
  default 2000; gemm: bench/lt_probe.cu, one block's projections through cuBLASLt at the model's
  shapes with M = tokens, heuristic vs best algorithm, fp16 and FP8; needs no export; attn:
  bench/attn_probe.py, varlen attention kernels (torch's flash and cuDNN) at the model's head shape on
  the FASTA's token-budget batches; needs no export),
  inflight=2, tokens=16384, graphs=auto|on|off, records=N (first N records), repeat=K (the records K times,
  copy k's ids suffixed _rk: long enough runs of the small models on a subset), device=,
  bench-args=a,b  env=K=V,K2=V2  torch-args=a,b  ncu-skip=20000 ncu-count=1200  label=  timeout=S
  cpuprofile=1 (e2e/raw: seqembed bench --cpuprofile OUT/profiles/PRESET-EXPORT[-LABEL]-MODE.pprof)
EOF
}

die() {
  echo "gpu.sh: $*" >&2
  exit 2
}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
cd "$root"

matrices=() args_lines=()
dry=0 fail_fast=0 budget=0 out=${OUT:-} work="" fasta="" device=cuda:0 build_info=.device/build.json
while (($#)); do
  case $1 in
  -f | --matrix) matrices+=("${2:?$1 needs a file}") && shift 2 ;;
  -n | --dry-run) dry=1 && shift ;;
  --out) out=${2:?} && shift 2 ;;
  --work) work=${2:?} && shift 2 ;;
  --fasta) fasta=${2:?} && shift 2 ;;
  --device) device=${2:?} && shift 2 ;;
  --budget) budget=${2:?} && shift 2 ;;
  --fail-fast) fail_fast=1 && shift ;;
  --build-info) build_info=${2:?} && shift 2 ;;
  -h | --help) usage && exit 0 ;;
  -*) usage >&2 && die "unknown option $1" ;;
  *) args_lines+=("$1") && shift ;;
  esac
done
[[ $budget =~ ^[0-9]+$ ]] || die "--budget wants seconds"
out=${out:-$root/out/bench}
work=${work:-${TMPDIR:-/tmp}/seqembed-bench}
if [[ -z $fasta ]]; then
  for f in .device/db8000.fasta.xz bench-data/db8000.fasta.xz; do
    [[ -s $f ]] && fasta=$f && break
  done
  [[ -n $fasta || $dry == 1 ]] || die "no FASTA: give --fasta, or run bench/pack.sh (it puts db8000.fasta.xz into .device/)"
  fasta=${fasta:-bench-data/db8000.fasta.xz}
fi
SEQEMBED_BIN=${SEQEMBED_BIN:-seqembed}
# STEP_SIGNAL: what a step past its timeout gets first (default TERM; QUIT makes a Go binary print
# every goroutine's stack before it exits, for a step that hangs; 15 s later it is killed).
step_signal=${STEP_SIGNAL:-TERM}
GPURUN_TEST=${GPURUN_TEST:-gpurun.test}

# ---- matrix lines -------------------------------------------------------------------------------
KEYS=" model export ops dtype precision gelu linear lnq attnop cpuprofile outliers layout check modes inflight tokens graphs records repeat golden device bench-args env torch-args ncu-skip ncu-count label timeout "
MODES=" e2e raw torch torch-compile parity precision profile gemm attn "
declare -A DEF=([export]=auto [dtype]=fp16 [precision]=fp16 [gelu]=erf [linear]=ort [lnq]=0 [attnop]=ort [cpuprofile]=0 [layout]=rows [check]=1 [modes]='e2e,raw,torch,torch-compile'
  [inflight]=2 [tokens]=16384 [golden]=2000 [ncu-skip]=20000 [ncu-count]=1200)
LINES=() # each: the line's key=value words, defaults applied

# add_line SOURCE TEXT: one matrix line (or a 'set' line) into LINES.
add_line() {
  local src=$1 text=$2 w k
  text=${text%%#*}
  read -r -a words <<<"$text" || true
  ((${#words[@]})) || return 0
  local is_set=0
  if [[ ${words[0]} == set ]]; then
    is_set=1
    words=("${words[@]:1}")
  fi
  declare -A L=()
  for k in "${!DEF[@]}"; do L[$k]=${DEF[$k]}; done
  for w in "${words[@]}"; do
    [[ $w == *=* ]] || die "$src: '$w' is not key=value"
    k=${w%%=*}
    [[ $KEYS == *" $k "* ]] || die "$src: unknown key '$k' (keys:$KEYS)"
    L[$k]=${w#*=}
    ((is_set)) && DEF[$k]=${w#*=}
  done
  ((is_set)) && return 0
  [[ -n ${L[model]:-} ]] || die "$src: no model="
  local line="" m
  for k in $KEYS; do [[ -n ${L[$k]:-} ]] && line+="$k=${L[$k]} "; done
  for m in ${L[modes]//,/ }; do [[ $MODES == *" $m "* ]] || die "$src: unknown mode '$m' (modes:$MODES)"; done
  LINES+=("${line% }")
}
for f in "${matrices[@]}"; do
  [[ -r $f ]] || die "cannot read matrix file $f"
  n=0
  while IFS= read -r text || [[ -n $text ]]; do
    n=$((n + 1))
    add_line "$f:$n" "$text"
  done <"$f"
done
for text in "${args_lines[@]}"; do add_line "argument" "$text"; done
((${#LINES[@]})) || {
  usage >&2
  die "no matrix lines"
}

# load LINE: the line's keys into L, and the derived names: preset, export label, model dir, ...
declare -A L
load() {
  L=()
  local w ws
  read -r -a ws <<<"$1"
  for w in "${ws[@]}"; do L[${w%%=*}]=${w#*=}; done
  case ${L[model]} in
  8M) preset=t6_8M ;; 35M) preset=t12_35M ;; 150M) preset=t30_150M ;; 650M) preset=t33_650M ;; 3B) preset=t36_3B ;;
  tiny | t6_8M | t12_35M | t30_150M | t33_650M | t36_3B) preset=${L[model]} ;;
  *) die "[$1] model '${L[model]}': want 8M 35M 150M 650M 3B tiny or a preset name" ;;
  esac
  case $preset in tiny) hidden=64 ;; t6_8M) hidden=320 ;; t12_35M) hidden=480 ;; t30_150M) hidden=640 ;; t33_650M) hidden=1280 ;; t36_3B) hidden=2560 ;; esac
  case $preset in tiny) heads=4 ;; t36_3B) heads=40 ;; *) heads=20 ;; esac # ESM-2's attention heads
  attn=${L[export]}
  [[ $attn == auto ]] && { ((hidden <= 480)) && attn=mha || attn=packed; } # tools/export_esm2.py --fused auto
  case $attn in mha | packed | traced | optimized | dir:*) ;; *) die "[$1] export '${L[export]}': want mha packed auto traced optimized dir:PATH" ;; esac
  [[ ${L[dtype]} == fp16 || ${L[dtype]} == fp32 ]] || die "[$1] dtype '${L[dtype]}': want fp16 or fp32"
  ops=${L[ops]:-}
  if [[ -z $ops ]]; then
    ops=none
    [[ ($attn == mha || $attn == packed) && ${L[dtype]} == fp16 ]] && ops=custom
  fi
  [[ $ops == custom || $ops == none ]] || die "[$1] ops '$ops': want custom or none"
  [[ $ops == custom && ! ($attn == mha || $attn == packed || $attn == dir:*) ]] && die "[$1] ops=custom needs export=mha|packed"
  [[ $ops == custom && ${L[dtype]} != fp16 && $attn != dir:* ]] && die "[$1] ops=custom needs dtype=fp16"
  [[ ${L[precision]} =~ ^(fp16|fp8|fp8-ffn)$ ]] || die "[$1] precision '${L[precision]}': want fp16, fp8 or fp8-ffn"
  [[ ${L[precision]} == fp8* && $attn != dir:* && ($attn != packed && $attn != mha || $ops != custom) ]] &&
    die "[$1] precision=fp8 needs export=packed|mha with ops=custom"
  [[ ${L[gelu]} == erf || ${L[gelu]} == tanh ]] || die "[$1] gelu '${L[gelu]}': want erf or tanh"
  [[ ${L[gelu]} == tanh && $attn != dir:* && ($attn != packed && $attn != mha || $ops != custom) ]] &&
    die "[$1] gelu=tanh needs export=packed|mha with ops=custom"
  [[ ${L[linear]} =~ ^(ort|lt|lt-res)$ ]] || die "[$1] linear '${L[linear]}': want ort, lt or lt-res"
  [[ ${L[linear]} == lt* && $attn != dir:* && ($attn != packed && $attn != mha || $ops != custom) ]] &&
    die "[$1] linear=${L[linear]} needs export=packed|mha with ops=custom"
  [[ ${L[lnq]} == 0 || ${L[lnq]} == 1 ]] || die "[$1] lnq '${L[lnq]}': want 0 or 1"
  [[ ${L[lnq]} == 1 && $attn != dir:* && ${L[precision]} != fp8* ]] && die "[$1] lnq=1 needs precision=fp8 or fp8-ffn"
  [[ ${L[lnq]} == 1 && ${L[linear]} == lt-res ]] && die "[$1] lnq=1 and linear=lt-res do not combine"
  [[ ${L[attnop]} == ort || ${L[attnop]} == cudnn ]] || die "[$1] attnop '${L[attnop]}': want ort or cudnn"
  [[ ${L[attnop]} == cudnn && $attn != packed ]] && die "[$1] attnop=cudnn needs export=packed"
  [[ ${L[cpuprofile]} == 0 || ${L[cpuprofile]} == 1 ]] || die "[$1] cpuprofile '${L[cpuprofile]}': want 0 or 1"
  [[ -z ${L[outliers]:-} || ${L[outliers]} =~ ^[0-9.]+$ ]] || die "[$1] outliers '${L[outliers]}': want a number"
  [[ ${L[golden]} =~ ^[0-9]+$ ]] || die "[$1] golden '${L[golden]}': want a record count"
  label=$attn
  [[ $attn == dir:* ]] && label=dir
  [[ $ops == custom && $attn != dir:* ]] && label+=+ops
  [[ ${L[layout]} == sequence ]] && label+=+seq
  [[ ${L[precision]} == fp8 && $attn != dir:* ]] && label+=+fp8
  [[ ${L[precision]} == fp8-ffn && $attn != dir:* ]] && label+=+fp8ffn
  [[ ${L[gelu]} == tanh && $attn != dir:* ]] && label+=+tanh
  [[ ${L[linear]} == lt* && $attn != dir:* ]] && label+=+${L[linear]}
  [[ ${L[lnq]} == 1 && $attn != dir:* ]] && label+=+lnq
  [[ ${L[attnop]} == cudnn && $attn != dir:* ]] && label+=+cudnn
  [[ -n ${L[outliers]:-} && $attn != dir:* ]] && label+=+out${L[outliers]}
  if [[ $attn == dir:* ]]; then
    mdir=${attn#dir:}
  else
    mdir=$work/models/$preset-$label-${L[dtype]}
  fi
  records=${L[records]:-all}
  repeat=${L[repeat]:-1}
  [[ $repeat =~ ^[1-9][0-9]*$ ]] || die "[$1] repeat '$repeat': want a count >= 1"
  fa=$work/data/input-$records.fasta
  ((repeat > 1)) && fa=$work/data/input-$records-x$repeat.fasta
  dev=${L[device]:-$device}
  goldfa=$work/data/golden-${L[golden]}.fasta # precision mode: the golden records (first golden=N)
}

# Exports some line runs parity on get golden vectors; seqembed is needed where a line runs it.
declare -A GOLDEN=()
need_seqembed=0
for l in "${LINES[@]}"; do
  load "$l"
  [[ ,${L[modes]}, == *,parity,* ]] && GOLDEN[$mdir]=testdata/golden-input.fasta
  [[ ,${L[modes]}, == *,precision,* ]] && GOLDEN[$mdir]=$goldfa
  [[ ,${L[modes]}, =~ ,(e2e|raw|profile), ]] && need_seqembed=1
done

# export_cmd: the tools/export_esm2.py command for the loaded line, in EXPORT.
export_cmd() {
  EXPORT=(python3 tools/export_esm2.py --preset "$preset" --out "$mdir")
  [[ ${L[dtype]} == fp16 ]] && EXPORT+=(--fp16)
  [[ ${L[precision]} == fp8 ]] && EXPORT+=(--precision fp8)
  [[ ${L[precision]} == fp8-ffn ]] && EXPORT+=(--precision fp8 --fp8-projections ffn)
  [[ ${L[gelu]} == tanh ]] && EXPORT+=(--fused-gelu)
  [[ ${L[linear]} == lt* ]] && EXPORT+=(--fp16-linear)
  [[ ${L[linear]} == lt-res ]] && EXPORT+=(--fused-residual)
  [[ ${L[lnq]} == 1 ]] && EXPORT+=(--fused-ln-quant)
  [[ ${L[attnop]} == cudnn ]] && EXPORT+=(--cudnn-attention)
  [[ -n ${L[outliers]:-} ]] && EXPORT+=(--outlier-channels "${L[outliers]}")
  case $attn in
  mha | packed) EXPORT+=(--fused "$attn") ;;
  optimized) EXPORT+=(--optimize) ;;
  esac
  [[ $ops == custom ]] && EXPORT+=(--custom-ops)
  [[ $attn == packed && ${L[layout]} == sequence ]] && EXPORT+=(--packed-layout sequence)
  [[ ${L[check]} == 0 ]] && EXPORT+=(--no-check)
  # Golden vectors come from the float32 PyTorch model: exports of one preset, seed and weight
  # change (outliers=) share them, so they are computed once (GOLDEN_COPY: the copy to reuse).
  GOLDEN_COPY=""
  if [[ -n ${GOLDEN[$mdir]:-} ]]; then
    local gkey
    gkey=$work/golden/$preset-out${L[outliers]:-0}-$(basename "${GOLDEN[$mdir]}" .fasta).json
    if [[ -s $gkey ]]; then
      GOLDEN_COPY=$gkey
    else
      EXPORT+=(--golden "${GOLDEN[$mdir]}" --golden-out "$mdir/golden.json")
      GOLDEN_SAVE=$gkey
    fi
  fi
  return 0
}

# ---- steps ---------------------------------------------------------------------------------------
t_start=$SECONDS
failures=0 skipped=0
STEP_RC=0 STEP_CWD="" STEP_STDOUT="" STEP_SECS=0
combined=$out/logs/steps.log
commas() { tr ',' ' ' <<<"$1"; }

# run_step NAME TIMEOUT CMD...: runs CMD (in STEP_CWD, stdout to STEP_STDOUT if set) under timeout,
# its output appended to logs/steps.log; sets STEP_RC (124: timed out; 125: no time left) and
# STEP_SECS. On failure prints the command and the end of its output.
run_step() {
  local name=$1 limit=$2
  shift 2
  if ((dry)); then
    printf '     %s:%s%s' "$name" "${STEP_CWD:+ (in $STEP_CWD)}" "${STEP_STDOUT:+ (stdout to $STEP_STDOUT)}"
    printf ' %q' "$@"
    echo
    STEP_RC=0 STEP_SECS=0 STEP_CWD="" STEP_STDOUT=""
    return 0
  fi
  local log=$work/logs/${STEP_LOG:-step}.log t0=$SECONDS
  : >"$log"
  STEP_RC=0
  if ((budget)); then
    local left=$((budget - (SECONDS - t_start) - 10))
    if ((left < 15)); then
      STEP_RC=125 STEP_SECS=0
      echo "   SKIPPED $name: the --budget of ${budget}s is spent" >&2
      printf '==== %s step %s: skipped, budget spent\n' "$(date -u +%T)" "$name" >>"$combined"
      STEP_CWD="" STEP_STDOUT=""
      return 0
    fi
    ((limit > left)) && limit=$left
  fi
  {
    printf '==== %s step %s (timeout %ss%s)\n+' "$(date -u +%T)" "$name" "$limit" "${STEP_CWD:+, in $STEP_CWD}"
    printf ' %q' "$@"
    echo
  } >>"$combined"
  if [[ -n $STEP_STDOUT ]]; then
    (cd "${STEP_CWD:-.}" && exec timeout -s "$step_signal" -k 15 "$limit" "$@") >"$STEP_STDOUT" 2>"$log" || STEP_RC=$?
  else
    (cd "${STEP_CWD:-.}" && exec timeout -s "$step_signal" -k 15 "$limit" "$@") >"$log" 2>&1 || STEP_RC=$?
  fi
  STEP_SECS=$((SECONDS - t0))
  cat "$log" >>"$combined"
  printf '==== step %s: exit %s after %ss\n' "$name" "$STEP_RC" "$STEP_SECS" >>"$combined"
  if ((STEP_RC)); then
    local why="exit status $STEP_RC"
    ((STEP_RC == 124 || STEP_RC == 137)) && why="timed out after ${limit}s"
    echo "   FAILED $name ($why): $(printf '%q ' "$@")" >&2
    tail -n 30 "$log" | sed 's/^/   | /' >&2
  fi
  STEP_CWD="" STEP_STDOUT=""
  return 0
}

# wait_ops: the result of the ops build started beside the first export (below), taken once: a
# failure is recorded against the line that started the build, then the current line ($n, $l) is
# loaded again.
ops_pid=""
wait_ops() {
  [[ -n $ops_pid ]] || return 0
  wait "$ops_pid" || true
  ops_pid=""
  STEP_RC=$(cat "$work/logs/build-ops.rc" 2>/dev/null || echo 1)
  STEP_SECS=$(cat "$work/logs/build-ops.secs" 2>/dev/null || echo 0)
  echo "== $(date -u +%T) the custom ops: build exit $STEP_RC after ${STEP_SECS}s"
  ((STEP_RC)) || return 0
  ops_ok=0
  load "$ops_line"
  common_sets 0 "$ops_line"
  fail_row build-ops
  load "$l"
  common_sets "$n" "$l"
}

# common_sets N LINE: the --set arguments every row of the loaded line (number N) gets.
common_sets() {
  SETS=(--set "model=${L[model]}" --set "preset=$preset" --set "dtype=${L[dtype]}" --set "precision=${L[precision]}" --set "gelu=${L[gelu]}" --set "linear=${L[linear]}" --set "lnq=${L[lnq]}" --set "attnop=${L[attnop]}"
    --set "max_batch_tokens=${L[tokens]}"
    --set "records=$records" --set "repeat=$repeat" --set "line=$1" --set "matrix=$2")
  [[ -n ${L[label]:-} ]] && SETS+=(--set "label=${L[label]}")
  return 0
}

# append ARGS...: results.py append into results.jsonl with the run's metadata.
append() {
  ((dry)) && return 0
  python3 "$here/results.py" append --meta "$meta" --results "$out/results.jsonl" "$@"
}

# record KIND SRC MODE [EXPORT_LABEL]: the finished step's rows into results.jsonl, or (STEP_RC set,
# or no result in SRC) a failed / skipped row.
record() {
  local kind=$1 src=$2 mode=$3 exp=${4-}
  local extra=() ms=()
  [[ -n $exp ]] && extra+=(--set "export=$exp")
  [[ $kind != torch ]] && ms=(--set "mode=$mode")
  if ((STEP_RC == 0)); then
    append --kind "$kind" --src "$src" "${SETS[@]}" "${extra[@]}" "${ms[@]}" --set "step_seconds=$STEP_SECS" && return 0
    echo "   FAILED: the step exited 0 but left no result in $src" >&2
    STEP_RC=1
  fi
  fail_row "$mode" "${extra[@]}"
}

# fail_row MODE [--set k=v...]: a failed (or, STEP_RC 125, skipped) row for the loaded line.
fail_row() {
  local mode=$1 status=failed err="exit $STEP_RC, see logs/steps.log"
  shift
  ((STEP_RC == 124 || STEP_RC == 137)) && err="timed out, see logs/steps.log"
  if ((STEP_RC == 125)); then
    status=skipped err="budget spent"
    skipped=$((skipped + 1))
  else
    failures=$((failures + 1))
  fi
  append --kind failed "${SETS[@]}" --set "mode=$mode" --set "status=$status" --set "error=$err" \
    --set "step_seconds=$STEP_SECS" "$@" || echo "gpu.sh: could not record the failure of $mode" >&2
  if ((fail_fast)) && [[ $status == failed ]]; then
    echo "gpu.sh: --fail-fast: stopping" >&2
    finish
  fi
  return 0
}

finished=0
finish() {
  ((dry)) && exit 0
  wait_ops
  # shellcheck disable=SC2034 # read by the EXIT trap
  finished=1
  if [[ -s $out/results.jsonl ]]; then
    echo
    python3 "$here/results.py" table "$out/results.jsonl" | tee "$out/summary.txt"
  fi
  echo "gpu.sh: $((SECONDS - t_start)) s, $failures failed and $skipped skipped step(s); results in $out/results.jsonl, logs in $combined"
  ((failures + skipped == 0)) || exit 1
  exit 0
}
# shellcheck disable=SC2154 # rc is set inside the trap
trap 'rc=$?; echo "gpu.sh: line $LINENO: \"$BASH_COMMAND\" failed (exit $rc)" >&2' ERR
# An unexpected exit still shows what was measured.
# shellcheck disable=SC2154
trap 'if ((!finished && !dry)) && [[ -s $out/results.jsonl ]]; then python3 "$here/results.py" table "$out/results.jsonl" || true; fi' EXIT

# ---- setup --------------------------------------------------------------------------------------
meta=$work/meta.json
if ((dry)); then
  echo "gpu.sh --dry-run: ${#LINES[@]} matrix line(s); out $out, work $work, data $fasta; the steps:"
else
  mkdir -p "$out/logs" "$work/logs" "$work/data" "$work/models" "$work/tmp"
  : >>"$combined"
  echo "== $(date -u +%T) gpu.sh: ${#LINES[@]} matrix line(s); out $out, work $work"
  python3 "$here/results.py" meta --build "$build_info" --out "$meta"
  nvidia-smi --query-gpu=index,name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null || echo "(no nvidia-smi)"
  if ((need_seqembed)) && ! command -v "$SEQEMBED_BIN" >/dev/null; then
    die "no $SEQEMBED_BIN on PATH (run under .device/on-device.sh, or set SEQEMBED_BIN)"
  fi
fi

# Input data, once per records= value.
declare -A DATA=()
for l in "${LINES[@]}"; do
  load "$l"
  [[ -n ${DATA[$fa]:-} ]] && continue
  DATA[$fa]=1
  if ((dry)); then
    echo "     data: $fasta -> $fa"
    continue
  fi
  [[ -s $fa ]] && continue
  [[ $records == all || $records =~ ^[0-9]+$ ]] || die "records=$records: want a number"
  case $fasta in
  *.xz) xz -dc "$fasta" >"$work/data/all.fasta.part" ;;
  *.gz) gzip -dc "$fasta" >"$work/data/all.fasta.part" ;;
  *) cp "$fasta" "$work/data/all.fasta.part" ;;
  esac
  if [[ $records != all ]]; then
    awk -v n="$records" '/^>/{k++} k>n{exit} {print}' "$work/data/all.fasta.part" >"$work/data/sub.fasta.part"
    mv "$work/data/sub.fasta.part" "$work/data/all.fasta.part"
  fi
  if ((repeat > 1)); then # copy 1 as it is, copy k with every id suffixed _rk
    for ((k = 1; k <= repeat; k++)); do
      awk -v k="$k" 'k > 1 && /^>/ {sub(/^>[^ \t]+/, "&_r" k)} {print}' "$work/data/all.fasta.part"
    done >"$fa"
    rm -f "$work/data/all.fasta.part"
  else
    mv "$work/data/all.fasta.part" "$fa"
  fi
  echo "   data: $fa, $(grep -c '^>' "$fa") records"
done
# Golden records for precision lines: the first golden=N of the input.
for l in "${LINES[@]}"; do
  load "$l"
  [[ ,${L[modes]}, == *,precision,* ]] || continue
  if ((dry)); then
    echo "     golden: first ${L[golden]} records of $fa -> $goldfa"
  elif [[ ! -s $goldfa ]]; then
    awk -v n="${L[golden]}" '/^>/{k++} k>n{exit} {print}' "$fa" >"$goldfa"
    echo "   golden: $goldfa, $(grep -c '^>' "$goldfa") records"
  fi
done

# The custom-op library, built once with nvcc where any export uses it; with cuDNN's
# RaggedAttention where a line asks attnop=cudnn: cuDNN from $SEQEMBED_OPS_CUDNN or the
# nvidia-cudnn wheel, the frontend headers from $SEQEMBED_CUDNN_FRONTEND or
# .device/cudnn-fe-include.tar.xz (bench/pack.sh CUDNN_FRONTEND=DIR carries them).
# cudnn_paths sets CUDNN_DIR (a cuDNN with include/ and lib/: $SEQEMBED_OPS_CUDNN, else the
# nvidia-cudnn wheel) and FE_DIR (cudnn-frontend's include/: $SEQEMBED_CUDNN_FRONTEND, else
# .device/cudnn-fe-include.tar.xz, unpacked once under $work); each empty where none is found.
cudnn_paths() {
  CUDNN_DIR=${SEQEMBED_OPS_CUDNN:-$(python3 -c 'import nvidia.cudnn as m; print(list(m.__path__)[0])' 2>/dev/null || true)}
  FE_DIR=${SEQEMBED_CUDNN_FRONTEND:-}
  if [[ -z $FE_DIR && -s .device/cudnn-fe-include.tar.xz ]]; then
    FE_DIR=$work/cudnn-fe/include
    ((dry)) || [[ -d $FE_DIR ]] || { mkdir -p "$work/cudnn-fe" && tar -xJf .device/cudnn-fe-include.tar.xz -C "$work/cudnn-fe"; }
  fi
}

opslib=$work/ops/libseqembed_ops.so ops_ok=1
ops_env=(SEQEMBED_OPS_ARCHS="${SEQEMBED_OPS_ARCHS:-90}")
for l in "${LINES[@]}"; do
  load "$l"
  [[ ${L[attnop]} == cudnn ]] || continue
  cudnn_paths
  echo "== ops with cuDNN's RaggedAttention: cuDNN ${CUDNN_DIR:-(none found)}, frontend ${FE_DIR:-(none found)}"
  ((dry)) || [[ -n $CUDNN_DIR && -n $FE_DIR ]] ||
    die "attnop=cudnn: no cuDNN (SEQEMBED_OPS_CUDNN, or the nvidia-cudnn wheel) or no frontend headers (SEQEMBED_CUDNN_FRONTEND, or bench/pack.sh CUDNN_FRONTEND=DIR)"
  ops_env+=(SEQEMBED_OPS_CUDNN="$CUDNN_DIR" SEQEMBED_CUDNN_FRONTEND="$FE_DIR")
  opslib=$work/ops-cudnn/libseqembed_ops.so # every line's exports get this superset
  break
done
for l in "${LINES[@]}"; do
  load "$l"
  [[ $ops == custom && $attn != dir:* ]] || continue
  if ((dry)) || [[ ! -s $opslib ]]; then
    ((dry)) || mkdir -p "$(dirname "$opslib")"
    if ((dry)); then
      echo "== build the custom ops (nvcc, sm_${SEQEMBED_OPS_ARCHS:-90}), beside the first export"
      run_step build-ops 240 env "${ops_env[@]}" bash scripts/build-ops.sh "$opslib"
    else
      # nvcc (one process) and an export (Python on the CPU; 2 min at 3B) overlap: the build runs in
      # the background and wait_ops takes its result before anything uses the library or times a
      # run (after the first export, or at once for a line without one). The two steps keep
      # separate logs; steps.log gets each as its step ends.
      echo "== $(date -u +%T) build the custom ops (nvcc, sm_${SEQEMBED_OPS_ARCHS:-90}), beside the first export"
      rm -f "$work/logs/build-ops.rc" "$work/logs/build-ops.secs"
      (
        STEP_LOG=build-ops run_step build-ops 240 env "${ops_env[@]}" bash scripts/build-ops.sh "$opslib"
        echo "$STEP_SECS" >"$work/logs/build-ops.secs"
        echo "$STEP_RC" >"$work/logs/build-ops.rc"
      ) &
      ops_pid=$! ops_line=$l
    fi
  fi
  break
done

# ---- the matrix ----------------------------------------------------------------------------------
declare -A EXPORTED=() TORCH_DONE=()
n=0
for l in "${LINES[@]}"; do
  n=$((n + 1))
  load "$l"
  common_sets "$n" "$l"
  modes=$(commas "${L[modes]}")
  echo "== $(date -u +%T) (+$((SECONDS - t_start))s) line $n: $l"
  to=${L[timeout]:-}

  # Export once per model directory.
  model_ok=1
  needs_model=0
  for m in $modes; do [[ $m == torch || $m == torch-compile || $m == gemm || $m == attn ]] || needs_model=1; done
  if ((needs_model)) && [[ $attn != dir:* && -z ${EXPORTED[$mdir]:-} ]]; then
    export_cmd
    sig=$(printf '%q ' "${EXPORT[@]}")
    if ((!dry)) && [[ -s $mdir/model.json && -f $mdir/.bench-export && $(cat "$mdir/.bench-export") == "$sig" ]]; then
      echo "   export $label: reusing $mdir"
      STEP_RC=0 STEP_SECS=0
      append --kind export "${SETS[@]}" --set "export=$label" --set mode=export --set reused=1 --set seconds=0
    elif [[ $ops == custom && $ops_ok == 0 ]]; then
      STEP_RC=1 STEP_SECS=0
      fail_row export --set "export=$label"
    else
      [[ ${L[check]} == 0 ]] || wait_ops # the export's parity check may load the library
      ((dry)) || { rm -rf "$mdir" && mkdir -p "$mdir"; }
      echo "   export $label ($preset, ${L[dtype]})"
      run_step "export-$preset-$label" "${to:-900}" env PYTHONUNBUFFERED=1 "${EXPORT[@]}"
      if [[ -n $ops_pid ]]; then
        exp_rc=$STEP_RC exp_secs=$STEP_SECS
        wait_ops
        STEP_RC=$exp_rc STEP_SECS=$exp_secs
        [[ $ops == custom && $ops_ok == 0 ]] && ((STEP_RC == 0)) && STEP_RC=1 # no library to copy
      fi
      ((dry)) && [[ $ops == custom ]] && echo "     cp $opslib $mdir/"
      if ((STEP_RC == 0 && !dry)) && [[ $ops == custom ]]; then cp "$opslib" "$mdir/"; fi
      ((dry)) && [[ -n $GOLDEN_COPY ]] && echo "     cp $GOLDEN_COPY $mdir/golden.json"
      if ((STEP_RC == 0 && !dry)); then
        if [[ -n $GOLDEN_COPY ]]; then
          cp "$GOLDEN_COPY" "$mdir/golden.json"
        elif [[ -n ${GOLDEN_SAVE:-} && -s $mdir/golden.json ]]; then
          mkdir -p "$work/golden" && cp "$mdir/golden.json" "$GOLDEN_SAVE"
        fi
      fi
      GOLDEN_SAVE=""
      if ((STEP_RC == 0 && !dry)); then
        echo "$sig" >"$mdir/.bench-export"
        append --kind export "${SETS[@]}" --set "export=$label" --set mode=export --set reused=0 --set "seconds=$STEP_SECS"
      else
        fail_row export --set "export=$label"
      fi
    fi
    ((STEP_RC == 0)) || model_ok=0
    EXPORTED[$mdir]=$model_ok
  elif ((needs_model)) && [[ $attn != dir:* ]]; then
    model_ok=${EXPORTED[$mdir]}
  elif ((needs_model && !dry)) && [[ ! -s $mdir/model.json ]]; then
    echo "   export dir:$mdir has no model.json" >&2
    model_ok=0
  fi

  wait_ops # nothing is timed while nvcc runs

  # Environment and extra flags of the seqembed steps.
  envs=()
  [[ -n ${L[env]:-} ]] && read -r -a envs <<<"$(commas "${L[env]}")"
  extra=()
  [[ -n ${L[bench-args]:-} ]] && read -r -a extra <<<"$(commas "${L[bench-args]}")"
  [[ -n ${L[graphs]:-} ]] && extra+=(--cuda-graphs "${L[graphs]}")
  textra=()
  [[ -n ${L[torch-args]:-} ]] && read -r -a textra <<<"$(commas "${L[torch-args]}")"

  for m in $modes; do
    case $m in
    e2e | raw)
      if ((!model_ok)); then
        STEP_RC=1 STEP_SECS=0
        fail_row "$m" --set "export=$label" --set "error=no model (export failed)"
        continue
      fi
      j=$work/tmp/bench.jsonl
      rm -f "$j"
      cmd=("$SEQEMBED_BIN" bench --device "$dev" --model "$mdir" --fasta "$fa" --inflight "${L[inflight]}"
        --max-batch-tokens "${L[tokens]}" --json-out "$j" "${extra[@]}")
      [[ $m == raw ]] && cmd+=(--raw)
      if [[ ${L[cpuprofile]} == 1 ]]; then
        ((dry)) || mkdir -p "$out/profiles"
        cmd+=(--cpuprofile "$out/profiles/$preset-${label//+/_}${L[label]:+-${L[label]}}-$m.pprof") # no + (the device tool refuses it)
      fi
      echo "   $m ($label)"
      run_step "$m-$preset-$label" "${to:-300}" env "${envs[@]}" "${cmd[@]}"
      record seqembed "$j" "$m" "$label"
      ;;
    torch | torch-compile)
      tkey="$preset ${L[dtype]} ${L[tokens]} $records ${L[torch-args]:-}"
      [[ -n ${TORCH_DONE[$tkey $m]:-} ]] && {
        echo "   $m: measured above (same model, data and budget)"
        continue
      }
      tmode=eager
      [[ $m == torch-compile ]] && tmode=compile
      # torch and torch-compile of one line run in one process (the model is built once)
      if [[ $m == torch && " $modes " == *" torch-compile "* && -z ${TORCH_DONE[$tkey torch-compile]:-} ]]; then
        tmode=both
      fi
      j=$work/tmp/torch.json
      rm -f "$j"
      cmd=(python3 bench/torch_baseline.py --preset "$preset" --fasta "$fa" --max-batch-tokens "${L[tokens]}"
        --order sorted --dtype "${L[dtype]}" --mode "$tmode" --json-out "$j" "${textra[@]}")
      echo "   torch ($tmode)"
      tlimit=600
      [[ $tmode == eager ]] && tlimit=400
      run_step "torch-$tmode-$preset" "${to:-$tlimit}" env PYTHONUNBUFFERED=1 TORCH_LOGS="${TORCH_LOGS:-recompiles}" "${cmd[@]}"
      TORCH_DONE[$tkey $m]=1
      [[ $tmode == both ]] && TORCH_DONE[$tkey torch-compile]=1
      if ((STEP_RC == 0)); then
        record torch "$j" "$m"
      else
        # torch_baseline.py rewrites its JSON after each result: keep what it measured, then one
        # failed row for each mode it did not
        [[ -s $j ]] && { append --kind torch --src "$j" "${SETS[@]}" --set "step_seconds=$STEP_SECS" || true; }
        got=$(python3 -c 'import json,sys; print(" ".join(r["mode"] for r in json.load(open(sys.argv[1]))["results"]))' "$j" 2>/dev/null || true)
        for tm in eager compile; do
          [[ $tmode == both || $tmode == "$tm" ]] || continue
          [[ " $got " == *" $tm "* ]] && continue
          mm=torch
          [[ $tm == compile ]] && mm=torch-compile
          fail_row "$mm"
        done
      fi
      ;;
    parity)
      if ((!model_ok)); then
        STEP_RC=1 STEP_SECS=0
        fail_row parity --set "export=$label" --set "error=no model (export failed)"
        continue
      fi
      ((dry)) || [[ -s $mdir/golden.json ]] || echo "   (no $mdir/golden.json: the parity test will fail)" >&2
      penv=(SEQEMBED_GPU_TESTS=1 "SEQEMBED_GPU_MODEL=$mdir")
      runre=GPUGolden
      if [[ $attn == mha ]]; then
        penv+=("SEQEMBED_GPU_GRAPH_MODEL=$mdir")
        runre='GPUGolden|GPUCUDAGraph'
      fi
      p=$work/tmp/parity.log
      echo "   parity ($label)"
      STEP_CWD=gpurun
      run_step "parity-$preset-$label" "${to:-300}" env "${penv[@]}" "${envs[@]}" "$GPURUN_TEST" -test.run "$runre" -test.v -test.count=1
      ((dry)) || cp "$work/logs/step.log" "$p"
      if ((STEP_RC == 0)); then
        record parity "$p" parity "$label"
      else
        fail_row parity --set "export=$label"
      fi
      ;;
    precision)
      if ((!model_ok)); then
        STEP_RC=1 STEP_SECS=0
        fail_row precision --set "export=$label" --set "error=no model (export failed)"
        continue
      fi
      j=$work/tmp/precision.json
      rm -f "$j"
      cmd=("$SEQEMBED_BIN" check-precision --device "$dev" --model "$mdir" --against "$mdir/golden.json"
        --max-batch-tokens "${L[tokens]}" --json "$j")
      echo "   precision ($label): against float32 PyTorch on ${L[golden]} records"
      run_step "precision-$preset-$label" "${to:-300}" env "${envs[@]}" "${cmd[@]}"
      # check-precision exits 1 when a threshold is missed: the report is the measurement
      ((STEP_RC == 1)) && [[ -s $j ]] && STEP_RC=0
      record precision "$j" precision "$label"
      ;;
    gemm)
      probe=$work/lt_probe
      if ((dry)) || [[ ! -x $probe ]]; then
        run_step build-lt-probe 120 "${NVCC:-nvcc}" -O2 -std=c++17 -arch=sm_90 bench/lt_probe.cu -o "$probe" -lcublasLt -lcublas
        if ((STEP_RC)); then
          fail_row gemm --set "error=bench/lt_probe.cu did not build"
          continue
        fi
      fi
      g=$work/tmp/gemm.txt
      echo "   gemm: one block's projections, M=${L[tokens]} D=$hidden F=$((4 * hidden))"
      STEP_STDOUT=$g
      run_step "gemm-$preset" "${to:-180}" "$probe" --m "${L[tokens]}" --d "$hidden" --f "$((4 * hidden))"
      ((dry)) || cp "$g" "$out/logs/gemm-$preset-${L[tokens]}.txt"
      record gemm "$g" gemm
      ;;
    attn)
      j=$work/tmp/attn.json
      rm -f "$j"
      echo "   attn: varlen attention kernels, heads $heads, head_dim $((hidden / heads)), ${L[tokens]} tokens a batch"
      run_step "attn-$preset" "${to:-240}" env PYTHONUNBUFFERED=1 python3 bench/attn_probe.py --fasta "$fa" --heads "$heads" \
        --head-dim "$((hidden / heads))" --max-batch-tokens "${L[tokens]}" --json-out "$j"
      record attn "$j" attn
      # cuDNN's ragged SDPA (bench/cudnn_attn_probe.cpp) where cuDNN and the frontend headers are found
      cudnn_paths
      if [[ -n $CUDNN_DIR && -n $FE_DIR ]]; then
        cprobe=$work/cudnn_attn_probe
        if ((dry)) || [[ ! -x $cprobe ]]; then
          run_step build-cudnn-attn-probe 180 "${NVCC:-nvcc}" -O2 -std=c++17 -arch=sm_90 -I "$FE_DIR" -I "$CUDNN_DIR/include" \
            bench/cudnn_attn_probe.cpp -o "$cprobe" -L "$CUDNN_DIR/lib" -l:libcudnn.so.9 -lnvrtc -lcuda
          ((STEP_RC)) && { fail_row attn --set "error=bench/cudnn_attn_probe.cpp did not build"; continue; }
        fi
        rm -f "$j"
        run_step "attn-cudnn-$preset" "${to:-120}" "$cprobe" --fasta "$fa" --heads "$heads" \
          --head-dim "$((hidden / heads))" --tokens "${L[tokens]}" --json-out "$j"
        record attn "$j" attn
      fi
      ;;
    profile)
      if ((!model_ok)); then
        STEP_RC=1 STEP_SECS=0
        fail_row profile --set "export=$label" --set "error=no model (export failed)"
        continue
      fi
      csv=$out/logs/ncu-$preset-$label.csv
      cmd=(ncu --clock-control none --print-units base --metrics gpu__time_duration.sum --csv --page raw
        --launch-skip "${L[ncu-skip]}" --launch-count "${L[ncu-count]}"
        "$(command -v "$SEQEMBED_BIN" || echo "$SEQEMBED_BIN")" bench --raw --device "$dev" --model "$mdir"
        --fasta "$fa" --inflight 1 --max-batch-tokens "${L[tokens]}" "${extra[@]}")
      echo "   profile ($label): ncu, ${L[ncu-count]} kernels after ${L[ncu-skip]}"
      STEP_STDOUT=$csv
      run_step "profile-$preset-$label" "${to:-400}" env "${envs[@]}" "${cmd[@]}"
      if ((dry)); then
        :
      elif ((STEP_RC == 0)); then
        python3 "$here/ncu_summary.py" "$csv" >>"$combined" 2>&1 || true
        if python3 "$here/ncu_summary.py" --json "$csv" >"$work/tmp/ncu.json" 2>>"$combined"; then
          record profile "$work/tmp/ncu.json" profile "$label"
        else
          STEP_RC=1
          fail_row profile --set "export=$label" --set "error=no kernel times in the ncu CSV"
        fi
      else
        fail_row profile --set "export=$label"
      fi
      ;;
    esac
  done
done
finish
