#!/usr/bin/env bash
# CI: the demo pipeline under runtime=docker, with phase timings.
#   1. ensure the engine (docker.io from Debian, dockerd in the background) and `make images`
#   2. the docker test suite (tests/containers, marker docker)
#   3. the demo build under runtime=local and runtime=docker in scratch copies: outputs must be
#      byte-identical; wall times and the per-job overhead go to build/bench-runtime.json
# Environment: FULL_DEMO=1 runs the full demo matrix (default: tests/containers/demo-small.yaml),
# SKIP_TESTS=1 skips step 2.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export PYTHONHASHSEED=0

T=()
t0=$(date +%s)
step() {  # <name> <command...>
  local name=$1; shift
  local s; s=$(date +%s)
  echo "== $name" >&2
  "$@"
  T+=("$(printf '%-28s %5ss' "$name" "$(( $(date +%s) - s ))")")
}

step "venv" make --no-print-directory .venv/.installed
step "images (make images)" make --no-print-directory images
if [ -z "${SKIP_TESTS:-}" ]; then
  step "container tests" .venv/bin/python -m pytest tests/containers -m "docker and not slow" -q -p no:cacheprovider
fi
bench_args=(--runtimes local docker --out build/bench-runtime.json)
[ -n "${FULL_DEMO:-}" ] && bench_args+=(--full)
step "demo local vs docker" .venv/bin/python tests/containers/demo.py "${bench_args[@]}"

echo "== phase timings" >&2
cat build/images-timings.txt >&2
printf '%s\n' "${T[@]}" "$(printf '%-28s %5ss' total "$(( $(date +%s) - t0 ))")" >&2
python3 - <<'PY' >&2
import json
d = json.load(open("build/bench-runtime.json"))
for r in d["runs"]:
    extra = "" if r["runtime"] == "local" else (
        f"  overhead {r['overhead_percent']:+.1f}% ({r.get('overhead_seconds_per_job', 0):+.2f} s/job), "
        f"identical outputs: {r['identical_to_local']}")
    print(f"demo ({d['config']}) runtime={r['runtime']}: {r['seconds']:.1f}s, {r['jobs']} jobs{extra}")
PY
