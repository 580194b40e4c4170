#!/usr/bin/env bash
# The test suite (Hypothesis CI profile: few examples, no deadlines).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${NESTIR_SKIP_SETUP:-0}" = 1 ] || bash scripts/setup.sh
export HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-ci}
exec "${PYTHON:-python3}" -m pytest tests -q -p no:cacheprovider -W ignore::DeprecationWarning
