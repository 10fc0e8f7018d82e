#!/usr/bin/env bash
# A local MLflow tracking server for many concurrent writers (Ray trials on several nodes):
#   bash mlflow/server.sh                      # http://127.0.0.1:5000, store in results/mlflow-server/
#   MLFLOW_PORT=5050 MLFLOW_STORE=/data/mlflow bash mlflow/server.sh
# then: export MLFLOW_TRACKING_URI=http://127.0.0.1:5000  (or --mlflow-tracking-uri).
# Artifacts are proxied by the server (--serve-artifacts), so trials need no direct access to the store.
set -euo pipefail
cd "$(dirname "$0")/.."
STORE="${MLFLOW_STORE:-results/mlflow-server}"
# MLflow 3's job runner (8 extra processes, for GenAI jobs) is not needed to track searches.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
mkdir -p "$STORE/artifacts"
exec mlflow server \
  --backend-store-uri "sqlite:///$(cd "$STORE" && pwd)/mlflow.db" \
  --artifacts-destination "$(cd "$STORE" && pwd)/artifacts" \
  --serve-artifacts \
  --host "${MLFLOW_HOST:-127.0.0.1}" \
  --port "${MLFLOW_PORT:-5000}" \
  "$@"
