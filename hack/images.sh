#!/usr/bin/env bash
# make images: builds the two container images on this machine, with no registry and no daemon,
# as OCI archives that containerd (ctr images import), podman, skopeo or a registry take:
#   artifacts/images/operator.tar     $IMAGE_REGISTRY/operator:$VERSION
#   artifacts/images/node-agent.tar   $IMAGE_REGISTRY/node-agent:$VERSION
# (VERSION: the chart's appVersion; the names deploy/ and the chart run). The steps:
#   1. the programs are published here into the build context artifacts/images/context: the agent
#      and the operator self-contained (no .NET in the images), podmig-runc NativeAOT, and the
#      node installer's files (kept after the build: another builder can build the Dockerfiles from it);
#   2. the base image: a Debian sid minbase root file system made by debootstrap, committed once
#      into the build storage (artifacts/images/storage) and kept there for the next build;
#   3. operator/Dockerfile and node-agent/Dockerfile built by buildah (the one hack/install-prereqs.sh
#      unpacks into /opt/pod-migration/buildah, else one on PATH), the base image and the context's
#      directories given as build arguments; the agent's image installs CRIU and runc from sid;
#   4. each image written as an OCI archive.
# Nothing outside artifacts/images is kept: buildah's configuration is private (artifacts/images/
# containers), its working containers are removed, and the two paths it writes on its own
# (/var/lib/containers/cache, /run/containers) are removed again when this made them.
#   hack/images.sh            build
#   hack/images.sh --tags     print the two image references and exit
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
registry="${IMAGE_REGISTRY:-ghcr.io/pod-migration}"
version="${VERSION:-$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/pod-migration/Chart.yaml)}"
operator="$registry/operator:$version"
agent="$registry/node-agent:$version"
if [ "${1:-}" = "--tags" ]; then
  printf '%s\n%s\n' "$operator" "$agent"
  exit 0
fi

log() { printf '[images] %s\n' "$*" >&2; }
die() { printf '[images] ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (buildah and debootstrap need it)"
prefix=${PODMIG_PREFIX:-/opt/pod-migration}
buildah_bin="$prefix/buildah/bin/buildah"
helpers="$prefix/buildah/bin"
if [ ! -x "$buildah_bin" ]; then
  buildah_bin=$(command -v buildah || true)
  helpers=""
fi
[ -n "$buildah_bin" ] || die "no buildah: run hack/install-prereqs.sh (it unpacks trixie's buildah into $prefix/buildah), or install buildah"
command -v debootstrap >/dev/null || die "no debootstrap: run hack/install-prereqs.sh (or apt-get install debootstrap)"
mirror=${PODMIG_DEBIAN_MIRROR:-http://deb.debian.org/debian}

out="$root/artifacts/images"
context="$out/context"
conf="$out/containers"
storage="$out/storage"
mkdir -p "$out" "$conf" "$storage"

# ---------------------------------------------------------------- buildah's private configuration
cat >"$conf/policy.json" <<'EOF'
{ "default": [ { "type": "insecureAcceptAnything" } ] }
EOF
cat >"$conf/registries.conf" <<'EOF'
unqualified-search-registries = []
short-name-mode = "disabled"
EOF
# vfs: no overlay mounts to leave behind; the graph root is kept between builds (the base image)
cat >"$conf/storage.conf" <<EOF
[storage]
driver = "vfs"
graphroot = "$storage/root"
runroot = "$storage/run"
EOF
# RUN steps get this machine's hard limits: buildah's default raises them, which needs CAP_SYS_RESOURCE
ulimits=()
for limit in nofile:n nproc:u; do
  hard=$(ulimit -H"${limit#*:}")
  [ "$hard" = unlimited ] || ulimits+=("\"${limit%%:*}=$hard:$hard\"")
done
seccomp=""
if [ -f "$prefix/buildah/usr/share/containers/seccomp.json" ]; then
  seccomp="seccomp_profile = \"$prefix/buildah/usr/share/containers/seccomp.json\""
fi
cat >"$conf/containers.conf" <<EOF
[containers]
default_ulimits = [$(IFS=,; echo "${ulimits[*]}")]
$seccomp
[network]
network_config_dir = "$storage/networks"
[engine]
${helpers:+helper_binaries_dir = [\"$helpers\"]}
EOF
export CONTAINERS_REGISTRIES_CONF="$conf/registries.conf" CONTAINERS_STORAGE_CONF="$conf/storage.conf" CONTAINERS_CONF="$conf/containers.conf"
export BUILDAH_ISOLATION=chroot TMPDIR="$out/tmp"
mkdir -p "$TMPDIR"
buildah() { "$buildah_bin" "$@"; }
policy=(--signature-policy "$conf/policy.json")

# paths buildah writes whatever it is told; removed at the end when they were not here before
made=()
for path in /var/lib/containers /run/containers; do
  [ -e "$path" ] || made+=("$path")
done
rootfs="$out/base-rootfs"
# a debootstrap that was killed can leave /proc, /sys or /dev/pts mounted in its root
unmount_rootfs() {
  local mounts
  mapfile -t mounts < <(findmnt -rn -o TARGET | grep -F "$rootfs/" | sort -r || true)
  for m in "${mounts[@]}"; do umount -l "$m" || true; done
  rm -rf --one-file-system "$rootfs"
}
cleanup() {
  unmount_rootfs
  buildah rm --all >/dev/null 2>&1 || true
  rm -rf "$TMPDIR"
  for path in "${made[@]}"; do rm -rf "$path"; done
}
trap cleanup EXIT

# ---------------------------------------------------------------- 1. the programs, published here
log "publishing the agent and the operator (self-contained, $version) and podmig-runc (NativeAOT) into $context"
rm -rf "$context"
mkdir -p "$context/node" "$context/native"
# (with their own build output: the benchmarks' Release build is not self-contained, and tests may be running artifacts/native/podmig-runc)
for project in node-agent/Migrate.NodeAgent/Migrate.NodeAgent.csproj:agent operator/Migrate.Operator/Migrate.Operator.csproj:operator; do
  dotnet publish "${project%%:*}" -c Release -r linux-x64 --self-contained -nologo -clp:ErrorsOnly --artifacts-path "$out/build" \
    -p:DebugType=none -p:Version="$version" -o "$context/${project##*:}" >/dev/null
done
rm -f "$context"/agent/*.xml "$context"/operator/*.xml
dotnet publish node-agent/Migrate.RestoreRuntime/Migrate.RestoreRuntime.csproj -c Release -r linux-x64 -nologo -clp:ErrorsOnly --artifacts-path "$out/build" \
  -p:DebugType=none -p:Version="$version" -o "$context/native" >/dev/null
rm -f "$context"/native/*.xml "$context"/native/*.dbg
cp deploy/node/install.sh deploy/node/install-node.sh deploy/node/containerd-podmig.toml deploy/node/containerd-podmig-v3.toml "$context/node/"

# ---------------------------------------------------------------- 2. the base image
base=localhost/podmig-base:sid
if buildah inspect --type image "$base" >/dev/null 2>&1 && [ "${PODMIG_FRESH_BASE:-}" != 1 ]; then
  log "base image $base present in $storage"
else
  unmount_rootfs
  log "making the base root file system: debootstrap --variant=minbase sid ($mirror)"
  debootstrap --variant=minbase sid "$rootfs" "$mirror" >"$out/debootstrap.log" 2>&1 \
    || die "debootstrap failed; the end of its log: $(tail -n 5 "$out/debootstrap.log")"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" --numeric-owner -cf "$out/base-rootfs.tar" .
  unmount_rootfs
  container=$(buildah from "${policy[@]}" scratch)
  buildah add "$container" "$out/base-rootfs.tar" / >/dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd /bin/bash "$container"
  buildah commit "${policy[@]}" --quiet --rm "$container" "$base" >/dev/null
  rm -f "$out/base-rootfs.tar"
fi

# ---------------------------------------------------------------- 3. and 4. the images, as OCI archives
build() {
  local dockerfile=$1 tag=$2 archive=$3
  shift 3
  log "building $tag from $dockerfile"
  rm -f "$archive" # a failed build leaves no archive of an earlier one behind
  buildah bud "${policy[@]}" --isolation chroot --force-rm --layers=false -f "$root/$dockerfile" \
    --build-arg BASE="$base" "$@" -t "$tag" "$context" >"$out/$(basename "$archive" .tar).log" 2>&1 \
    || die "building $tag failed; the end of the log: $(tail -n 8 "$out/$(basename "$archive" .tar).log")"
  buildah push "${policy[@]}" --quiet "$tag" "oci-archive:$archive:$tag" >/dev/null
  buildah rmi "$tag" >/dev/null
}
build operator/Dockerfile "$operator" "$out/operator.tar"
# apt inside the build follows this machine's apt on one point: where the host's apt is told not to
# check Release files' Valid-Until (a frozen mirror copy, as on the project's machines), so is the
# build's. PODMIG_APT_OPTIONS replaces that choice.
apt_options=${PODMIG_APT_OPTIONS-}
# (the dump read whole first: grep -q ending the pipe early would fail it under pipefail)
if [ -z "${PODMIG_APT_OPTIONS+set}" ] && grep -qi '^Acquire::Check-Valid-Until "false";' <<<"$(apt-config dump 2>/dev/null)"; then
  apt_options="-o Acquire::Check-Valid-Until=false"
fi
build node-agent/Dockerfile "$agent" "$out/node-agent.tar" --build-arg APT_OPTIONS="$apt_options"
echo "built $operator ($out/operator.tar, $(du -m "$out/operator.tar" | cut -f1) MB) and $agent ($out/node-agent.tar, $(du -m "$out/node-agent.tar" | cut -f1) MB)"
