#!/usr/bin/env bash
# Submit an SMA search to a Ray cluster as a job, follow its logs, exit with its final status:
#   SMA_STORAGE_ROOT=/shared/sma RAY_ADDRESS=http://127.0.0.1:8265 bash cluster/submit.sh --config cluster/search.yaml
# Prints `sma: job id: <id>` first; exits 0 when the job SUCCEEDED, 1 when it FAILED, 3 when it was STOPPED,
# 2 on a usage error. Rerunning the same command resumes the search (same experiment name); add --fresh to
# start over. Interrupting this script leaves the job running (`ray job logs -f <id>`, `ray job stop <id>`).
#
# SMA_STORAGE_ROOT   absolute folder that outlives the job and that every node reaches (NFS/EFS/PVC): results,
#                    Optuna studies, Ray storage and the default MLflow store go under it (`--output-dir`).
#                    Required unless the arguments give an absolute --output-dir; a relative one is refused
#                    by the job (it would land in Ray's throw-away copy of this directory).
# SMA_ENTRYPOINT_NUM_CPUS / SMA_ENTRYPOINT_NUM_GPUS   what the driver reserves for its shared work (baseline,
#                    importance analysis): default 1 CPU, 0 GPU; set SMA_ENTRYPOINT_NUM_GPUS=1 on a GPU cluster
#                    so that work runs on a GPU node rather than on the CPU head.
# SMA_COMMAND        tune (default) or ablate.     SMA_SUBMISSION_ID   the job id (default: generated).
# SMA_SUBMIT_DRY_RUN=1   print the `ray job submit` command and exit.
# Ray 2.60 clusters use token authentication: the client reads ~/.ray/auth_token (or $RAY_AUTH_TOKEN) once
# RAY_AUTH_MODE=token is set (set here by default); without it submission fails with "Missing authentication token".
set -euo pipefail
cd "$(dirname "$0")/.."
usage() { echo "usage: SMA_STORAGE_ROOT=/abs/shared/dir cluster/submit.sh --config SEARCH.yaml [sma $COMMAND flags...]" >&2; exit 2; }
COMMAND="${SMA_COMMAND:-tune}"
case "$COMMAND" in tune|ablate) ;; *) echo "cluster/submit.sh: SMA_COMMAND must be tune or ablate" >&2; exit 2 ;; esac
[ "$#" -gt 0 ] || usage
storage=()
if [ -n "${SMA_STORAGE_ROOT:-}" ]; then
  case "$SMA_STORAGE_ROOT" in
    /*) storage=(--output-dir "$SMA_STORAGE_ROOT") ;;
    *) echo "cluster/submit.sh: SMA_STORAGE_ROOT must be an absolute path on the cluster, got $SMA_STORAGE_ROOT" >&2; exit 2 ;;
  esac
elif [[ " $* " != *" --output-dir "* && " $* " != *" --output-dir="* ]]; then
  echo "cluster/submit.sh: set SMA_STORAGE_ROOT (or --output-dir) to an absolute folder that outlives the job" >&2
  usage
fi
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
ADDRESS="${RAY_ADDRESS:-http://127.0.0.1:8265}"
ID="${SMA_SUBMISSION_ID:-sma-$COMMAND-$(date +%Y%m%d-%H%M%S)-$RANDOM}"
submit=(ray job submit --address "$ADDRESS" --submission-id "$ID"
  --working-dir . --runtime-env cluster/runtime_env.yaml
  --entrypoint-num-cpus "${SMA_ENTRYPOINT_NUM_CPUS:-1}" --entrypoint-num-gpus "${SMA_ENTRYPOINT_NUM_GPUS:-0}"
  -- python -m sma.cli "$COMMAND" "${storage[@]}" "$@")
if [ -n "${SMA_SUBMIT_DRY_RUN:-}" ]; then
  printf '%q ' "${submit[@]}"; echo
  exit 0
fi
echo "sma: job id: $ID"
trap 'echo; echo "sma: job $ID keeps running: ray job logs -f $ID / ray job stop $ID (RAY_ADDRESS=$ADDRESS)"; exit 130' INT
rc=0
"${submit[@]}" || rc=$?
# `ray job submit` exits 0 for a STOPPED job too: ask the job server for the final status.
status=$(python - "$ADDRESS" "$ID" <<'EOF'
import sys
from ray.job_submission import JobSubmissionClient
print(JobSubmissionClient(sys.argv[1]).get_job_status(sys.argv[2]).value)
EOF
) || { echo "sma: cannot read the status of job $ID" >&2; exit $(( rc ? rc : 1 )); }
echo "sma: job $ID $status"
case "$status" in
  SUCCEEDED) exit 0 ;;
  STOPPED) exit 3 ;;
  *) exit 1 ;;
esac
