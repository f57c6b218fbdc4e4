#!/usr/bin/env bash
# Flake hunt: the test suite without the real-model tests (-m "not local_llm"), $STRESS_RUNS times in a
# row (default 3), each beside $STRESS_BURNERS processes that burn a CPU each (default 2), as a busy CI
# machine would. Stops after the first run that fails and says which. Extra arguments go to pytest
# (e.g. `bash scripts/stress.sh -k federation`). The burners are killed however the script ends.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${STRESS_RUNS:-3}"
burners="${STRESS_BURNERS:-2}"
bash scripts/setup.sh
bash scripts/install-mosquitto.sh
export PATH="$PWD/.venv/bin:$PATH:/usr/sbin"

pids=()
stop_burners() {
  if [ "${#pids[@]}" -gt 0 ]; then
    kill "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
    pids=()
  fi
}
trap stop_burners EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
for _ in $(seq 1 "$burners"); do
  ( while :; do :; done ) &
  pids+=("$!")
done
echo "== stress: $runs runs of pytest -m \"not local_llm\" $*, beside $burners CPU burners (pids ${pids[*]})"

for run in $(seq 1 "$runs"); do
  echo "== stress: run $run of $runs"
  started=$SECONDS
  set +e
  pytest -m "not local_llm" "$@"
  status=$?
  set -e
  if [ "$status" != 0 ]; then
    echo "== stress: run $run of $runs FAILED (pytest exit code $status) after $((SECONDS - started)) s" >&2
    exit "$status"
  fi
  echo "== stress: run $run of $runs passed in $((SECONDS - started)) s"
done
echo "== stress: all $runs runs passed"
