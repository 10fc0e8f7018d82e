#!/usr/bin/env bash
# Submit an SMA search to a Ray cluster as a job:
#   RAY_ADDRESS=http://127.0.0.1:8265 bash cluster/submit.sh --config cluster/search.yaml [sma tune flags...]
# Rerunning the same command resumes the search (same experiment name); add --fresh to start over.
# Ray 2.60 clusters use token authentication: the client reads ~/.ray/auth_token (or $RAY_AUTH_TOKEN)
# once RAY_AUTH_MODE=token is set; without it `ray job submit` fails with "Missing authentication token".
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$#" -eq 0 ]; then
  echo "usage: cluster/submit.sh --config SEARCH.yaml [sma tune flags...]" >&2
  exit 2
fi
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
exec ray job submit \
  --address "${RAY_ADDRESS:-http://127.0.0.1:8265}" \
  --working-dir . \
  --runtime-env cluster/runtime_env.yaml \
  -- python -m sma.cli tune "$@"
