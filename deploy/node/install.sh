#!/usr/bin/env bash
# Installs (install) or removes (uninstall) pod-migration's node pieces. Run on the node as root,
# by the agent DaemonSet's init container (host / mounted at $HOST_ROOT) or by hand.
#   install:   /usr/local/bin/podmig-runc, /etc/containerd/conf.d/podmig.toml, the imports line
#              in /etc/containerd/config.toml (added once, a backup kept as config.toml.podmig-backup).
#              The drop-in is in the main config's format: containerd-podmig-v3.toml when it says
#              `version = 3` (containerd 2.x), else containerd-podmig.toml (version 2: 1.6, 1.7,
#              and 2.x hosts whose main config is still version 2).
#              Also the CNI IPAM plugin podmig-ipam (a link to podmig-runc in /opt/cni/bin, or
#              $PODMIG_CNI_BIN_DIR), which a network uses only if its configuration names it
#              (docs/connections.md: addresses that move with their pods).
#   uninstall: removes the files, the link and the imports line it added; restores nothing else.
# containerd must be restarted afterwards for the handler to appear (or disappear).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="${HOST_ROOT:-}"
binary="${PODMIG_RUNC_BINARY:-$here/podmig-runc}"
config="$root/etc/containerd/config.toml"
cni_bin="${PODMIG_CNI_BIN_DIR:-/opt/cni/bin}"
marker="# added by pod-migration"

case "${1:-}" in
  install)
    install -D -m 0755 "$binary" "$root/usr/local/bin/podmig-runc"
    mkdir -p "$root$cni_bin"
    ln -sfn /usr/local/bin/podmig-runc "$root$cni_bin/podmig-ipam"
    mkdir -p "$(dirname "$config")"
    touch "$config"
    dropin="$here/containerd-podmig.toml"
    if grep -Eq '^[[:space:]]*version[[:space:]]*=[[:space:]]*3[[:space:]]*(#.*)?$' "$config"; then
      dropin="$here/containerd-podmig-v3.toml"
    fi
    install -D -m 0644 "$dropin" "$root/etc/containerd/conf.d/podmig.toml"
    if ! grep -q "conf.d/\*.toml" "$config"; then
      cp "$config" "$config.podmig-backup"
      { printf 'imports = ["/etc/containerd/conf.d/*.toml"] %s\n' "$marker"; cat "$config.podmig-backup"; } > "$config"
    fi
    echo "installed ($(basename "$dropin")); restart containerd to load the podmig runtime handler"
    ;;
  uninstall)
    rm -f "$root/usr/local/bin/podmig-runc" "$root/etc/containerd/conf.d/podmig.toml"
    if [ "$(readlink "$root$cni_bin/podmig-ipam" 2>/dev/null)" = /usr/local/bin/podmig-runc ]; then
      rm -f "$root$cni_bin/podmig-ipam"
    fi
    if [ -f "$config" ]; then
      sed -i "/$marker/d" "$config"
    fi
    echo "removed; restart containerd to drop the podmig runtime handler"
    ;;
  *)
    echo "usage: $0 install|uninstall" >&2
    exit 2
    ;;
esac
