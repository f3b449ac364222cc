#!/usr/bin/env bash
# GPU check, ready to run on one GPU in at most 8 minutes (each step has its own timeout):
#   1. the CUDA conformance tests (skipped on machines without a GPU),
#   2. the merge bench at 7B-like shapes in bf16 (random weights: 28 layers, hidden 3584,
#      2 specialists; --layers fewer when the disk or memory cannot hold three checkpoints),
#   3. a short search on the GPU (the demo space on the shipped zoo),
# then prints a table for results/BENCHMARKS.md (and writes its `gpu-check` section):
# apply time vs the device's own measured copy bandwidth, trials/hour, peak GPU memory.
#
#   bash bench/gpu_check.sh                      # on the GPU machine, from the repository root
#   bash bench/gpu_check.sh --wheels .gpu-wheels # offline machine lacking packages: run `make gpu-wheels`
#                                                # where the network is, carry .gpu-wheels along
#   bash bench/gpu_check.sh --dry-run            # CPU only, tiny shapes: checks this script's logic
#
# Options: --python PY (interpreter to build the venv from; default python3, which on the GPU
# image holds torch), --no-venv (use PY as it is), --layers N, --out DIR (logs and JSON; default
# $OUT when set, else a temp dir), --budget S (total seconds, default 480).
set -uo pipefail

cd "$(dirname "$0")/.."
REPO=$PWD
PY=python3
VENV=1
DRY=0
WHEELS=""
LAYERS=28
BUDGET=480
OUTDIR="${OUT:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --python) PY=$2; shift ;;
    --no-venv) VENV=0 ;;
    --wheels) WHEELS=$(cd "$2" && pwd); shift ;;
    --layers) LAYERS=$2; shift ;;
    --out) OUTDIR=$2; shift ;;
    --budget) BUDGET=$2; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "error: unknown option $1 (see bench/gpu_check.sh --help)" >&2; exit 2 ;;
  esac
  shift
done
[ -n "$OUTDIR" ] || OUTDIR=$(mktemp -d /tmp/gpu-check-XXXX)
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
START=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
say() { echo "[gpu_check $(( $(date +%s) - START ))s] $*"; }
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

# ---- 0. environment: a venv over the image's packages (torch comes from there), the repo installed
if [ "$VENV" = 1 ]; then
  ENV_DIR="$REPO/.venv-gpu"
  if [ ! -x "$ENV_DIR/bin/python" ]; then
    say "creating $ENV_DIR from $PY (system site packages: the image's torch)"
    "$PY" -m venv --system-site-packages "$ENV_DIR" || { echo "error: could not create a venv with $PY" >&2; exit 2; }
    # The image's python3 may itself be a venv (/opt/torch/.venv), whose packages
    # --system-site-packages does not reach: a .pth file puts its site-packages on the path too.
    "$PY" -c "import site; print('\n'.join(site.getsitepackages()))" \
      >"$("$ENV_DIR/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_image_site.pth"
  fi
  PYBIN="$ENV_DIR/bin/python"
  # --no-deps: the machine is offline; what the image lacks comes from --wheels below
  timeout 120 "$PYBIN" -m pip install --quiet --no-deps --no-build-isolation --no-index -e "$REPO" >"$OUTDIR/install.log" 2>&1 \
    || say "editable install failed (see $OUTDIR/install.log); using PYTHONPATH=$REPO instead"
else
  PYBIN=$PY
fi
# Import what the three steps need; install each missing module from the wheelhouse, if one was given.
for _ in 1 2 3 4 5 6 7 8 9 10; do
  missing=$("$PYBIN" - <<'EOF' 2>/dev/null
import importlib
for mod in ("torch", "transformers", "safetensors", "pytest", "automerge.engine", "automerge.cli",
            "automerge.search.run", "automerge.eval"):
    try:
        importlib.import_module(mod)
    except ModuleNotFoundError as exc:
        print(exc.name.split(".")[0])
        break
EOF
)
  [ -z "$missing" ] && break
  case "$missing" in yaml) pkg=pyyaml ;; psycopg2) pkg=psycopg2-binary ;; *) pkg=$missing ;; esac
  if [ -z "$WHEELS" ]; then
    echo "error: module '$missing' is missing on this machine; on a machine with the network run 'make gpu-wheels' and pass --wheels .gpu-wheels (carry that folder)" >&2
    exit 2
  fi
  say "installing $pkg from $WHEELS"
  timeout 120 "$PYBIN" -m pip install --quiet --no-index --find-links "$WHEELS" "$pkg" >>"$OUTDIR/install.log" 2>&1 \
    || { echo "error: $pkg is not in $WHEELS (see $OUTDIR/install.log); add it to the gpu-wheels target" >&2; exit 2; }
done
if [ "$DRY" = 1 ]; then
  DEVICE=cpu
else
  DEVICE=cuda
  "$PYBIN" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { echo "error: torch sees no GPU here; run with --dry-run to check the script on a CPU" >&2; exit 2; }
fi
say "python $("$PYBIN" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__)'), device $DEVICE, out $OUTDIR"

# ---- 1. CUDA conformance tests (the methods' GPU results equal their CPU ones)
say "step 1: CUDA conformance tests"
timeout $(( $(left) < 90 ? $(left) : 90 )) "$PYBIN" -m pytest -q -p no:cacheprovider -o addopts="" -rs \
  tests/methods/test_methods_conformance.py -k gpu >"$OUTDIR/conformance.log" 2>&1
echo "conformance rc=$?" >>"$OUTDIR/conformance.log"
tail -3 "$OUTDIR/conformance.log"

# ---- 2. merge bench at 7B-like shapes, bf16 resident, 2 specialists
if [ "$DRY" = 1 ]; then
  SHAPE=(--shape tiny --layers 2 --bandwidth-mb 64)
else
  # Three bf16 checkpoints of 28 layers take ~46 GB: put them in RAM (/dev/shm) or on disk, where
  # they fit; otherwise fewer layers (said in the table).
  SHAPE=(--shape 7b --layers "$LAYERS")
fi
WORK=""
need_gb=$(( LAYERS * 3 * 2 * 233 / 1000 + 3 * 2 * 2 ))  # per layer 233M params in bf16, + embeddings
for dir in /dev/shm "${TMPDIR:-/tmp}" "$REPO"; do
  free_gb=$(df -Pk "$dir" 2>/dev/null | awk 'NR==2 {print int($4 / 1048576)}')
  if [ -n "$free_gb" ] && [ "$free_gb" -ge $(( need_gb + 4 )) ]; then WORK=$(mktemp -d "$dir/gpu-check-XXXX"); break; fi
done
if [ -z "$WORK" ] && [ "$DRY" = 0 ]; then
  fit=$(( (free_gb - 16) * 1000 / (3 * 2 * 233) ))
  say "no folder holds ${need_gb} GB of checkpoints; using $fit layers in ${TMPDIR:-/tmp}"
  SHAPE=(--shape 7b --layers "$fit"); WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-XXXX")
fi
[ -n "$WORK" ] || WORK=$(mktemp -d)
say "step 2: merge bench (${SHAPE[*]}) in $WORK"
# dare_ties is left out at 7B: its noise cache (fp32 [k, *shape], drawn on the CPU) would be 61 GB.
METHODS=linear,task_arithmetic,ties
[ "$DRY" = 1 ] && METHODS=$METHODS,dare_ties
timeout $(( $(left) - 150 )) "$PYBIN" bench/merge_bench.py --device "$DEVICE" --dtype bfloat16 "${SHAPE[@]}" \
  --methods "$METHODS" --threads "$(nproc)" --repeats 3 --no-mergekit --no-write --workdir "$WORK" \
  --json "$OUTDIR/merge.json" \
  >"$OUTDIR/merge.log" 2>&1
echo "merge bench rc=$?" >>"$OUTDIR/merge.log"
rm -rf "$WORK"
grep -E "^(linear|task_arithmetic|ties|dare_ties|built)|rc=" "$OUTDIR/merge.log"

# ---- 3. a short search on the device (the demo space on the shipped zoo)
say "step 3: short search"
SEARCH_S=$(( $(left) - 40 ))  # the table and the venv's imports need the rest
if [ "$SEARCH_S" -gt 30 ]; then
  timeout "$SEARCH_S" "$PYBIN" -m automerge.cli search search_spaces/demo.yaml --study gpu-check --trials 6 \
    --device "$DEVICE" --quiet --no-finalize --no-report --results-dir "$OUTDIR/search" \
    --timeout "$(( SEARCH_S - 20 ))s" >"$OUTDIR/search.log" 2>&1
  echo "search rc=$?" >>"$OUTDIR/search.log"
else
  echo "search skipped: ${SEARCH_S}s left" >"$OUTDIR/search.log"
fi
tail -2 "$OUTDIR/search.log"

# ---- 4. the table
"$PYBIN" bench/gpu_check_table.py --out "$OUTDIR" --elapsed "$(( $(date +%s) - START ))" $([ "$DRY" = 1 ] && echo --no-write)
say "done in $(( $(date +%s) - START ))s (budget ${BUDGET}s); logs in $OUTDIR"
