#!/usr/bin/env bash
# The test command: set up the environment, then run the whole suite (arguments go to pytest).
set -uo pipefail
cd "$(dirname "$0")/.."
. tools/setup_env.sh || exit 1
export DS_ACCELERATOR=cpu
python -m pytest "$@"
rc=$?
if [[ $rc -eq 5 ]]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit $rc
