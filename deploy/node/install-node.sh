#!/usr/bin/env bash
# The agent DaemonSet's init container (Helm value agent.installNodeConfiguration=true): installs
# podmig-runc and the containerd drop-in into the host (mounted under $HOST_ROOT) with install.sh,
# and restarts containerd in the host's namespaces (hostPID: nsenter into PID 1) only when
# something changed, so that restarts of the agent do not restart containerd again.
# PODMIG_RESTART_CONTAINERD=false: never restart (print what changed; restart by hand).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="${HOST_ROOT:?HOST_ROOT must name where the host root file system is mounted}"
files=("$root/usr/local/bin/podmig-runc" "$root/etc/containerd/conf.d/podmig.toml" "$root/etc/containerd/config.toml")
state() { for f in "${files[@]}"; do if [ -f "$f" ]; then sha256sum "$f"; else echo "missing $f"; fi; done; }
before="$(state)"
PODMIG_RUNC_BINARY="$here/podmig-runc" "$here/install.sh" install
if [ "$(state)" = "$before" ]; then
  echo "node configuration unchanged; containerd not restarted"
  exit 0
fi
echo "node configuration changed"
if [ "${PODMIG_RESTART_CONTAINERD:-true}" = "true" ]; then
  nsenter --target 1 --mount --uts --ipc --net --pid -- systemctl restart containerd
  echo "containerd restarted (running containers keep running: their shims stay)"
else
  echo "restart containerd on this node to load the podmig runtime handler"
fi
