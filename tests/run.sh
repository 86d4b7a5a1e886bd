#!/usr/bin/env bash
# The test command: set up the environment, then run the suite (arguments go to pytest).
#   tests/run.sh          the full suite (CI), with the 20 slowest tests listed
#   tests/run.sh --fast   the fast tier for local work: no test marked slow (subprocesses,
#                         multi-rank launches; pytest.ini)
set -uo pipefail
cd "$(dirname "$0")/.."
tier=(--durations=20)
if [[ "${1:-}" == "--fast" ]]; then
  shift
  tier=(-m "not slow" --durations=10)
fi
. tools/setup_env.sh || exit 1
export DS_ACCELERATOR=cpu
python -m pytest "${tier[@]}" "$@"
rc=$?
if [[ $rc -eq 5 ]]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit $rc
