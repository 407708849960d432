#!/usr/bin/env bash
# make demo: a live migration in the local sandbox cluster (see README). Runs as root after
# `make prereqs build`. Brings the sandbox up (hack/sandbox up), moves the counter pod from
# examples/, prints a summary, tears the sandbox down and prints DEMO-RESULT {json} as the last
# line. With --keep the sandbox stays up for kubectl (hack/sandbox down removes it).
set -euo pipefail
cd "$(dirname "$0")/.."
keep=
for arg in "$@"; do
  case $arg in
    --keep) keep=1 ;;
    *) echo "usage: hack/demo.sh [--keep]" >&2; exit 2 ;;
  esac
done
state=${PODMIG_SANDBOX_STATE:-/run/podmig-sandbox/state.json}
result=$(mktemp /tmp/podmig-demo-result.XXXXXX)
down() {
  local rc=$?
  if [[ -z $keep ]]; then
    echo "tearing the sandbox down"
    hack/sandbox down --state "$state" || rc=1
  else
    echo
    echo "the sandbox stays up (--keep):"
    echo "  export KUBECONFIG=$(sed -n 's/.*"kubeconfig": "\(.*\)".*/\1/p' "$state")"
    echo "  kubectl get nodes,pods,migrationrequests -o wide; hack/sandbox status; hack/sandbox down"
  fi
  [[ -s $result ]] && cat "$result"
  rm -f "$result"
  exit "$rc"
}
trap down EXIT
hack/sandbox up --nodes 2 --state "$state"
hack/sandbox demo --state "$state" --result "$result"
