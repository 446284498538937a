#!/usr/bin/env bash
# The kernelexec benchmarks, one command.
#
#   bash bench/run.sh           full run (~5-10 min on 2 cores): engine bench, Node-RED bench,
#                               then bench/results/{engine,latest}.json, docs/performance.png and
#                               the figures section of docs/performance.md are regenerated
#   bash bench/run.sh --smoke   tiny counts for CI (< 2 min, no timed assertion): fails only when
#                               a message is lost or fails, or a process / shm file is left behind;
#                               writes under bench/results/tmp/ and touches no committed file
#
# KERNELEXEC_PYTHON selects the interpreter (default: .venv/bin/python of this checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export KERNELEXEC_PYTHON="${KERNELEXEC_PYTHON:-$ROOT/.venv/bin/python}"
PY=$KERNELEXEC_PYTHON
SMOKE=""
case "${1:-}" in
  --smoke) SMOKE="--smoke" ;;
  "") ;;
  *) echo "usage: bash bench/run.sh [--smoke]" >&2; exit 2 ;;
esac

if [[ -n $SMOKE ]]; then
  OUT=bench/results/tmp
  mkdir -p "$OUT"
  ENGINE_JSON=$OUT/engine-smoke.json LATEST_JSON=$OUT/latest-smoke.json PNG=$OUT/performance-smoke.png
else
  OUT=bench/results
  ENGINE_JSON=$OUT/engine.json LATEST_JSON=$OUT/latest.json PNG=docs/performance.png
fi

status=0
read -r load _ < /proc/loadavg
cores=$(nproc)
if awk -v l="$load" -v c="$cores" 'BEGIN { exit !(l > c / 2) }'; then
  echo "note: load average $load on $cores cores: other programs compete for the CPU, and the" \
    "kernelexec figures (several processes per message) suffer more than the floor's" >&2
fi
echo "== engine benchmark (bench/engine_bench.py) =="
"$PY" bench/engine_bench.py $SMOKE --out "$ENGINE_JSON" || status=$?
if [[ -z $SMOKE ]]; then
  echo "== where a hot message's time goes (bench/breakdown.py) =="
  "$PY" bench/breakdown.py --out "$OUT/breakdown.json" || status=$?
fi
echo "== Node-RED benchmark (bench/nodered_bench.js) =="
node --expose-gc bench/nodered_bench.js $SMOKE --out "$LATEST_JSON" || status=$?

if [[ -s $LATEST_JSON ]]; then
  "$PY" bench/plot.py --latest "$LATEST_JSON" --out "$PNG"
  if [[ -n $SMOKE ]]; then
    "$PY" bench/report.py --latest "$LATEST_JSON" --engine "$ENGINE_JSON" --stdout > "$OUT/figures-smoke.md"
  else
    "$PY" bench/report.py --latest "$LATEST_JSON" --engine "$ENGINE_JSON" \
      --breakdown "$OUT/breakdown.json"
  fi
fi

# Leave nothing behind: the harness checks its own processes; this looks machine-wide (other
# programs' kernels may show up here, so it only reports).
left=$(pgrep -af 'kernelexec.kernel|kernelexec.handles.template|ipykernel|floor_worker.py' || true)
shm=$(ls /dev/shm 2>/dev/null | grep kernelexec || true)
[[ -n $left ]] && printf 'note: kernel processes running on this machine now:\n%s\n' "$left"
[[ -n $shm ]] && printf 'note: kernelexec files in /dev/shm now:\n%s\n' "$shm"
if [[ $status -ne 0 ]]; then
  echo "benchmark FAILED (exit $status): see the PROBLEM lines above" >&2
fi
exit $status
