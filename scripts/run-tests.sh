#!/usr/bin/env bash
# The whole test suite in phases, each timed. Called by `make test` (and so by .ci/run).
# A phase's failure does not stop the later ones; the script fails if any phase failed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export PYTHONHASHSEED=0
failed=0; total_passed=0; total_failed=0; report=()

phase() {  # phase NAME CMD...
  local name=$1; shift
  local start=$SECONDS out rc
  echo "=== phase: $name"
  out=$(mktemp); "$@" 2>&1 | tee "$out"; rc=${PIPESTATUS[0]}
  local took=$((SECONDS - start))
  if [ ! -c /dev/null ]; then  # once seen after a session's test runs: say which phase did it
    echo "run-tests: WARNING: phase $name left /dev/null a regular file; restoring the device" >&2
    rm -f /dev/null && mknod -m 666 /dev/null c 1 3
  fi
  local line; line=$(grep -E '(passed|failed|errors?|deselected).* in [0-9.]+s' "$out" | tail -1)
  local p f e
  p=$(grep -oE '[0-9]+ passed' <<<"$line" | grep -oE '[0-9]+' || true)
  f=$(grep -oE '[0-9]+ failed' <<<"$line" | grep -oE '[0-9]+' || true)
  e=$(grep -oE '[0-9]+ errors?' <<<"$line" | grep -oE '[0-9]+' || true)
  total_passed=$((total_passed + ${p:-0})); total_failed=$((total_failed + ${f:-0} + ${e:-0}))
  [ "$rc" -eq 0 ] || failed=1
  report+=("$(printf '%-10s %5ss  exit %s  %s' "$name" "$took" "$rc" "${line//=/}")")
  rm -f "$out"
}

MARK_FAST="not slow and not docker and not slurm and not ssh and not stress and not benchmark and not fault"
phase unit      $PY -m pytest -q -m "$MARK_FAST"
phase fault     $PY -m pytest -q -m "fault and not docker and not slurm"
phase collect   $PY -m pytest -q -m "(ssh or stress) and not docker and not slurm"
phase workflow  $PY -m pytest -q -m "slow and not docker and not slurm and not ssh and not stress"
phase images    make --no-print-directory images
phase docker    $PY -m pytest -q -m "docker and not slurm"
# SLURM: a hung status check could otherwise wait forever (about 6-9 min normally; each build
# inside has its own timeout too).
phase slurm     timeout -k 30 1800 $PY -m pytest -q -m "slurm"

echo "=== phase times"
printf '%s\n' "${report[@]}"
echo "$total_passed passed, $total_failed failed"
exit $failed
