#!/usr/bin/env bash
# Installs everything the project needs on a Debian bookworm machine, as root, idempotently.
#
#   * From bookworm: runc, containerd, CNI plugins, iptables, busybox-static, iproute2 and a C
#     toolchain (the test workloads are small static C programs).
#   * CRIU >= 4.2.1 from Debian sid into a private prefix. Bookworm's CRIU 3.17 cannot dump on
#     kernels >= 6.13 (the vDSO area is split into [vvar] and [vvar_vclock]); trixie's 4.1 cannot
#     dump a process holding any IPv4 or IPv6 socket on kernels >= 6.16 (they refuse SO_PASSCRED
#     and SO_PASSSEC on such sockets and CRIU 4.1 treats that as an error; fixed in 4.2). sid's
#     criu needs sid's libc, so the packages are unpacked (never installed) into $PREFIX and the
#     binary runs through that prefix's own dynamic loader. The system's libc and apt sources are
#     left alone.
#   * A `criu` wrapper in /usr/local/sbin (ahead of /usr/sbin on every default PATH) so that
#     runc, containerd's shim and libcriu's "swrk" child all run the good CRIU.
#
# A second run with everything present only verifies (a few seconds).
# Environment: PODMIG_PREFIX (default /opt/pod-migration).
set -euo pipefail

PREFIX=${PODMIG_PREFIX:-/opt/pod-migration}
CRIU_PREFIX="$PREFIX/criu"
CRIU_MIN_VERSION=40201            # major*10000 + minor*100 + sublevel, as libcriu reports it
CRIU_SUITE=sid
# checkpointctl (1.3) reads the checkpoint archives the project exports; it needs sid's glibc
# too, so it lives in the same prefix and runs through the same loader.
CRIU_PACKAGES=(criu libcriu2 libcompel1 checkpointctl)
WRAPPER=/usr/local/sbin/criu
CHECKPOINTCTL_WRAPPER=/usr/local/bin/checkpointctl
DEBIAN_MIRROR=${PODMIG_DEBIAN_MIRROR:-http://deb.debian.org/debian}

BOOKWORM_PACKAGES=(
  runc containerd containernetworking-plugins iptables iputils-arping busybox-static iproute2
  gcc libc6-dev util-linux procps tar ca-certificates
  clang zlib1g-dev
  debootstrap patchelf
)

log() { printf '[install-prereqs] %s\n' "$*" >&2; }
die() { printf '[install-prereqs] ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages and writes $PREFIX)"
[ "$(uname -m)" = x86_64 ] || die "only x86_64 is supported (found $(uname -m))"

# ---------------------------------------------------------------- bookworm packages
missing=()
for p in "${BOOKWORM_PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [ "$status" = "install ok installed" ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing from Debian: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # --no-install-recommends keeps Debian's own criu 3.17 (recommended by some) off the machine.
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "Debian packages present: ${BOOKWORM_PACKAGES[*]}"
fi

# containerd's package enables a systemd unit; the project starts its own instances with their
# own --root/--state/--address and never uses the system one. Nothing to do when systemd is
# absent (as on CI machines).

# ---------------------------------------------------------------- CRIU from sid
criu_run() {
  "$CRIU_PREFIX/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" \
    --library-path "$CRIU_PREFIX/usr/lib/x86_64-linux-gnu" "$CRIU_PREFIX/usr/sbin/criu" "$@"
}

criu_prefix_ok() {
  [ -f "$CRIU_PREFIX/.complete" ] || return 1
  [ -x "$CRIU_PREFIX/usr/sbin/criu" ] || return 1
  [ -e "$CRIU_PREFIX/usr/lib/x86_64-linux-gnu/libcriu.so.2" ] || return 1
  # a prefix made before checkpointctl joined the list is made again
  [ -x "$CRIU_PREFIX/usr/bin/checkpointctl" ] || return 1
  # a prefix holding an older CRIU (trixie's 4.1, before the move to sid) is made again
  [ "$(criu_numeric_version "$(criu_run --version 2>/dev/null | head -n 1)")" -ge "$CRIU_MIN_VERSION" ]
}

# "Version: 4.2.1" -> 40201
criu_numeric_version() {
  local version major minor sub
  version=${1#Version: }
  IFS=. read -r major minor sub <<<"$version"
  [[ "$major" =~ ^[0-9]+$ && "$minor" =~ ^[0-9]+$ ]] || { echo 0; return; }
  echo $(( major * 10000 + minor * 100 + ${sub:-0} ))
}

# A private apt state for one Debian suite under $2: the system's sources, lists and dpkg
# database are not touched. Sets apt_opts for the caller's apt-get and apt-cache calls.
private_apt() {
  local suite=$1 state=$2
  mkdir -p "$state"/{lists/partial,cache/archives/partial,etc/sources.list.d,etc/preferences.d}
  : >"$state/status"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $DEBIAN_MIRROR $suite main" \
    >"$state/etc/sources.list"
  apt_opts=(
    -o "Dir::State=$state" -o "Dir::State::Lists=$state/lists" -o "Dir::State::status=$state/status"
    -o "Dir::Cache=$state/cache" -o "Dir::Etc::SourceList=$state/etc/sources.list"
    -o "Dir::Etc::SourceParts=$state/etc/sources.list.d" -o "Dir::Etc::Preferences=$state/etc/preferences"
    -o "Dir::Etc::PreferencesParts=$state/etc/preferences.d" -o "APT::Sandbox::User=root"
    -o "Debug::NoLocking=1"
  )
  log "fetching the $suite package index (private apt state in $state)"
  apt-get "${apt_opts[@]}" update -qq || die "apt-get update for the $suite suite failed"
}

# Downloads packages (names after the first two arguments) with the private apt state into
# $1/debs and unpacks every one into $2 (made afresh), listing them in $2/PACKAGES.
download_and_unpack() {
  local work=$1 staging=$2 deb
  shift 2
  mkdir -p "$work/debs"
  (cd "$work/debs" && apt-get "${apt_opts[@]}" download -qq "$@") || die "apt-get download failed: $*"
  rm -rf "$staging"
  mkdir -p "$staging"
  for deb in "$work"/debs/*.deb; do
    dpkg-deb -x "$deb" "$staging"
  done
  (cd "$work/debs" && ls ./*.deb | sed 's|^\./||') >"$staging/PACKAGES"
}

install_criu_prefix() {
  local work staging deps
  work=$(mktemp -d /tmp/podmig-$CRIU_SUITE.XXXXXX)
  # shellcheck disable=SC2064
  trap "rm -rf '$work'" RETURN
  private_apt "$CRIU_SUITE" "$work/apt"
  # The dependency closure of CRIU's packages (hard dependencies only), as the suite resolves it.
  mapfile -t deps < <(apt-cache "${apt_opts[@]}" depends --recurse --no-recommends --no-suggests \
      --no-conflicts --no-breaks --no-replaces --no-enhances "${CRIU_PACKAGES[@]}" \
    | grep -v '^ ' | grep -v '^<' | sort -u)
  [ ${#deps[@]} -ge ${#CRIU_PACKAGES[@]} ] || die "could not resolve CRIU's dependencies in $CRIU_SUITE"
  log "downloading ${#deps[@]} $CRIU_SUITE packages: ${deps[*]}"
  staging="$CRIU_PREFIX.new"
  download_and_unpack "$work" "$staging" "${deps[@]}"
  rm -rf "$CRIU_PREFIX"
  mv "$staging" "$CRIU_PREFIX"
  chmod 0755 "$PREFIX" "$CRIU_PREFIX"
  criu_run --version >/dev/null || die "the unpacked CRIU does not run through its own loader"
  touch "$CRIU_PREFIX/.complete"
}

mkdir -p "$PREFIX"
if criu_prefix_ok; then
  log "CRIU prefix present: $CRIU_PREFIX"
else
  install_criu_prefix
fi

# ---------------------------------------------------------------- containerd 1.7 and 2.1
# The sandbox's nodes can run newer containerd releases than bookworm's 1.6
# (hack/sandbox up --containerd 1.7|2.1): trixie's 1.7 and sid's 2.1, each unpacked (never
# installed) into its own prefix. Their binaries need only glibc 2.34, so they run directly on
# bookworm's; the shim is taken from the same prefix, runc stays bookworm's. The system's
# containerd 1.6 is untouched and stays the default.
CONTAINERD_RELEASES=("1.7:trixie" "2.1:sid")

containerd_version() { { "$1/usr/bin/containerd" --version 2>/dev/null || true; } | awk '{print $3}'; }

install_containerd_prefix() {
  local release=$1 suite=$2 prefix=$3 work version
  work=$(mktemp -d "/tmp/podmig-$suite.XXXXXX")
  # shellcheck disable=SC2064
  trap "rm -rf '$work'" RETURN
  private_apt "$suite" "$work/apt"
  log "downloading containerd from $suite"
  (cd "$work" && apt-get "${apt_opts[@]}" download -qq containerd) || die "apt-get download containerd ($suite) failed"
  rm -rf "$prefix.new"
  mkdir -p "$prefix.new"
  dpkg-deb -x "$work"/containerd_*.deb "$prefix.new"
  version=$(containerd_version "$prefix.new")
  case "$version" in
    "$release".*) ;;
    *) die "$suite's containerd is '${version:-unrunnable}', not $release.x: the sandbox's --containerd $release needs $release" ;;
  esac
  rm -rf "$prefix"
  mv "$prefix.new" "$prefix"
  touch "$prefix/.complete"
}

for entry in "${CONTAINERD_RELEASES[@]}"; do
  release=${entry%%:*}
  suite=${entry#*:}
  prefix="$PREFIX/containerd-$release"
  version=$(containerd_version "$prefix")
  if [ -f "$prefix/.complete" ] && [[ "$version" == "$release".* ]]; then
    log "containerd $release prefix present: $prefix ($version)"
  else
    install_containerd_prefix "$release" "$suite" "$prefix"
  fi
  "$prefix/usr/bin/containerd-shim-runc-v2" -v >/dev/null 2>&1 || die "$prefix's containerd-shim-runc-v2 does not run"
done

# ---------------------------------------------------------------- Prometheus
# The tests scrape the sandbox's operator and agents with a real Prometheus and check the chart's
# alert rules with promtool: bookworm's prometheus package, unpacked (never installed: no
# service, no user) into its own prefix. Its binaries need only the system's glibc.
PROMETHEUS_PREFIX="$PREFIX/prometheus"
if [ -f "$PROMETHEUS_PREFIX/.complete" ] && "$PROMETHEUS_PREFIX/usr/bin/promtool" --version >/dev/null 2>&1; then
  log "Prometheus prefix present: $PROMETHEUS_PREFIX"
else
  install_prometheus_prefix() {
    local work
    work=$(mktemp -d /tmp/podmig-bookworm.XXXXXX)
    # shellcheck disable=SC2064
    trap "rm -rf '$work'" RETURN
    private_apt bookworm "$work/apt"
    log "downloading prometheus from bookworm"
    (cd "$work" && apt-get "${apt_opts[@]}" download -qq prometheus) || die "apt-get download prometheus failed"
    rm -rf "$PROMETHEUS_PREFIX.new"
    mkdir -p "$PROMETHEUS_PREFIX.new"
    dpkg-deb -x "$work"/prometheus_*.deb "$PROMETHEUS_PREFIX.new"
    "$PROMETHEUS_PREFIX.new/usr/bin/prometheus" --version >/dev/null 2>&1 || die "the unpacked prometheus does not run"
    rm -rf "$PROMETHEUS_PREFIX"
    mv "$PROMETHEUS_PREFIX.new" "$PROMETHEUS_PREFIX"
    touch "$PROMETHEUS_PREFIX/.complete"
  }
  install_prometheus_prefix
fi
"$PROMETHEUS_PREFIX/usr/bin/promtool" --version >/dev/null 2>&1 || die "$PROMETHEUS_PREFIX's promtool does not run"

# ---------------------------------------------------------------- an OCI registry (docker-registry)
# containerd 2.x restores a CRI checkpoint from a checkpoint image, and pulls the image the
# checkpoint was taken from by NAME@DIGEST: the sandbox's containerd 2.1 path needs a registry.
# Bookworm's docker-registry (the CNCF distribution registry 2.8), unpacked (never installed: no
# service, no user) into its own prefix; the sandbox runs it on a loopback port.
REGISTRY_PREFIX="$PREFIX/registry"
if [ -f "$REGISTRY_PREFIX/.complete" ] && [ -x "$REGISTRY_PREFIX/usr/bin/docker-registry" ]; then
  log "registry prefix present: $REGISTRY_PREFIX"
else
  install_registry_prefix() {
    local work
    work=$(mktemp -d /tmp/podmig-bookworm.XXXXXX)
    # shellcheck disable=SC2064
    trap "rm -rf '$work'" RETURN
    private_apt bookworm "$work/apt"
    log "downloading docker-registry from bookworm"
    (cd "$work" && apt-get "${apt_opts[@]}" download -qq docker-registry) || die "apt-get download docker-registry failed"
    rm -rf "$REGISTRY_PREFIX.new"
    mkdir -p "$REGISTRY_PREFIX.new"
    dpkg-deb -x "$work"/docker-registry_*.deb "$REGISTRY_PREFIX.new"
    "$REGISTRY_PREFIX.new/usr/bin/docker-registry" --version >/dev/null 2>&1 || die "the unpacked docker-registry does not run"
    rm -rf "$REGISTRY_PREFIX"
    mv "$REGISTRY_PREFIX.new" "$REGISTRY_PREFIX"
    touch "$REGISTRY_PREFIX/.complete"
  }
  install_registry_prefix
fi
"$REGISTRY_PREFIX/usr/bin/docker-registry" --version >/dev/null 2>&1 || die "$REGISTRY_PREFIX's docker-registry does not run"

# ---------------------------------------------------------------- buildah (make images)
# make images builds the operator's and the agent's images here, with no registry and no daemon:
# a base root file system made by debootstrap (bookworm's, above), the project's Dockerfiles built
# by trixie's buildah 1.39 (bookworm has none), written as OCI archives. buildah, netavark (which
# buildah requires even with the host's network) and their libraries, trixie's glibc among them,
# are unpacked into their own prefix. patchelf (bookworm's) points each binary at that prefix's
# loader and libraries: buildah re-executes /proc/self/exe, so running it through the loader, as
# CRIU is, does not work. The same prefix holds trixie's podman 5.4 and conmon: make bench measures
# podman's own checkpoint/restore pipeline beside ours (with bookworm's runc and the CRIU above,
# its configuration written by the benchmark, never the system's).
BUILDAH_PREFIX="$PREFIX/buildah"
BUILDAH_SUITE=trixie
BUILDAH_PACKAGES=(buildah netavark golang-github-containers-common podman conmon)
BUILDAH_PROGRAMS=(usr/bin/buildah usr/lib/podman/netavark usr/bin/podman usr/bin/conmon)

buildah_ok() {
  local program
  [ -f "$BUILDAH_PREFIX/.complete" ] || return 1
  for program in "${BUILDAH_PROGRAMS[@]}"; do
    "$BUILDAH_PREFIX/bin/${program##*/}" --version >/dev/null 2>&1 || return 1
  done
}

install_buildah_prefix() {
  local work staging lib queue=() pkg dep program binary
  declare -A seen=()
  work=$(mktemp -d "/tmp/podmig-$BUILDAH_SUITE.XXXXXX")
  # shellcheck disable=SC2064
  trap "rm -rf '$work'" RETURN
  private_apt "$BUILDAH_SUITE" "$work/apt"
  # The packages and the libraries they need (each hard dependency's first alternative, followed
  # only into lib* and gcc-*-base packages: the programs' other dependencies are not needed to
  # build images, and following them all would pull in hundreds of packages).
  queue=("${BUILDAH_PACKAGES[@]}")
  while [ ${#queue[@]} -gt 0 ]; do
    pkg=${queue[0]}
    queue=("${queue[@]:1}")
    [ -z "${seen[$pkg]:-}" ] || continue
    seen[$pkg]=1
    while read -r dep; do
      case "$dep" in lib*|gcc-*-base) [ -n "${seen[$dep]:-}" ] || queue+=("$dep") ;; esac
    done < <(apt-cache "${apt_opts[@]}" depends --no-recommends --no-suggests --no-conflicts --no-breaks \
        --no-replaces --no-enhances "$pkg" \
      | awk '/^ *[|]?(Pre)?Depends:/ { if (!alternative) print $2; alternative = ($1 ~ /^[|]/); next } { alternative = 0 }' \
      | grep -v '^<' | sed 's/:any$//')
  done
  log "downloading ${#seen[@]} $BUILDAH_SUITE packages for buildah and podman: ${!seen[*]}"
  staging="$BUILDAH_PREFIX.new"
  download_and_unpack "$work" "$staging" "${!seen[@]}"
  mkdir -p "$staging/bin"
  # buildah's own test helpers (about 90 MB) are never used
  rm -rf "$staging/usr/libexec/buildah" "$staging/usr/share/doc" "$staging/usr/share/man"
  lib="$BUILDAH_PREFIX/usr/lib/x86_64-linux-gnu"
  for program in "${BUILDAH_PROGRAMS[@]}"; do
    binary="$staging/bin/${program##*/}"
    cp "$staging/$program" "$binary"
    # --force-rpath: a RUNPATH would not be searched for the libraries' own dependencies (libgpgme's libassuan)
    patchelf --set-interpreter "$lib/ld-linux-x86-64.so.2" --force-rpath --set-rpath "$lib" "$binary" \
      || die "patchelf $binary failed"
  done
  rm -rf "$BUILDAH_PREFIX"
  mv "$staging" "$BUILDAH_PREFIX"
  touch "$BUILDAH_PREFIX/.complete"
  buildah_ok || die "the unpacked buildah or podman does not run: $("$BUILDAH_PREFIX/bin/buildah" --version 2>&1 | head -n 2) $("$BUILDAH_PREFIX/bin/podman" --version 2>&1 | head -n 2)"
}

if buildah_ok; then
  log "buildah prefix present: $BUILDAH_PREFIX ($("$BUILDAH_PREFIX/bin/buildah" --version); $("$BUILDAH_PREFIX/bin/podman" --version))"
else
  install_buildah_prefix
fi

# ---------------------------------------------------------------- hardware breakpoints
# CRIU stops each task leaving its parasite code with a hardware breakpoint. Where the hypervisor
# never delivers that trap to a guest (hack/probes/hw-breakpoint.c says why), every dump and
# restore hangs although `criu check` passes: the wrapper then selects CRIU's per-syscall
# stepping, which CRIU exposes only as its fault-injection code 130 (FI_NO_BREAKPOINTS).
PROBE="$PREFIX/bin/hw-breakpoint-probe"
probe_source="$(dirname "$0")/probes/hw-breakpoint.c"
if [ ! -x "$PROBE" ] || [ "$probe_source" -nt "$PROBE" ]; then
  mkdir -p "$PREFIX/bin"
  gcc -O2 -Wall -Werror -o "$PROBE.tmp" "$probe_source" || die "could not build $probe_source"
  mv "$PROBE.tmp" "$PROBE"
fi
criu_environment=""
if probe_out=$(timeout 10 "$PROBE" 2>&1); then
  log "hardware breakpoints work: CRIU uses them"
else
  log "$probe_out: CRIU will step tasks per system call instead (CRIU_FAULT=130)"
  criu_environment="CRIU_FAULT=130; export CRIU_FAULT
"
fi

# ---------------------------------------------------------------- criu wrapper on PATH
wrapper_text="#!/bin/sh
# Installed by pod-migration's hack/install-prereqs.sh: sid's CRIU through its own loader.
${criu_environment}exec '$CRIU_PREFIX/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2' --library-path '$CRIU_PREFIX/usr/lib/x86_64-linux-gnu' '$CRIU_PREFIX/usr/sbin/criu' \"\$@\""
if [ ! -f "$WRAPPER" ] || [ "$(cat "$WRAPPER")" != "$wrapper_text" ]; then
  log "writing $WRAPPER"
  printf '%s\n' "$wrapper_text" >"$WRAPPER.tmp"
  chmod 0755 "$WRAPPER.tmp"
  mv "$WRAPPER.tmp" "$WRAPPER"
fi

checkpointctl_text="#!/bin/sh
# Installed by pod-migration's hack/install-prereqs.sh: sid's checkpointctl through CRIU's prefix loader.
exec '$CRIU_PREFIX/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2' --library-path '$CRIU_PREFIX/usr/lib/x86_64-linux-gnu' '$CRIU_PREFIX/usr/bin/checkpointctl' \"\$@\""
if [ ! -f "$CHECKPOINTCTL_WRAPPER" ] || [ "$(cat "$CHECKPOINTCTL_WRAPPER")" != "$checkpointctl_text" ]; then
  log "writing $CHECKPOINTCTL_WRAPPER"
  printf '%s\n' "$checkpointctl_text" >"$CHECKPOINTCTL_WRAPPER.tmp"
  chmod 0755 "$CHECKPOINTCTL_WRAPPER.tmp"
  mv "$CHECKPOINTCTL_WRAPPER.tmp" "$CHECKPOINTCTL_WRAPPER"
fi

# The .NET interop loads libcriu.so.2 (and its libprotobuf-c.so.1) from this directory; it is
# also recorded here for other tools.
printf '%s\n' "$CRIU_PREFIX/usr/lib/x86_64-linux-gnu" >"$PREFIX/criu-library-dir"

# ---------------------------------------------------------------- verification
found=$(command -v criu || true)
[ "$found" = "$WRAPPER" ] || die "'criu' on PATH is '${found:-nothing}', expected $WRAPPER (is /usr/local/sbin first on PATH?)"
version_line=$(criu --version | head -n 1)
version=${version_line#Version: }
[ "$(criu_numeric_version "$version_line")" -ge "$CRIU_MIN_VERSION" ] || die "CRIU $version is older than 4.2.1"
check_out=$(criu check 2>&1) || die "criu check failed: $check_out"
grep -q 'Looks good' <<<"$check_out" || die "criu check did not say 'Looks good': $check_out"
for tool in runc containerd ctr iptables busybox ip gcc; do
  command -v "$tool" >/dev/null || die "$tool is not on PATH after installation"
done
[ -x /usr/lib/cni/bridge ] || [ -x /opt/cni/bin/bridge ] || die "CNI plugins not found"
# (Debian's build of checkpointctl has no --version; --help proves it runs through the loader)
checkpointctl --help >/dev/null 2>&1 || die "checkpointctl does not run: $(checkpointctl --help 2>&1 | head -n 2)"
# `criu check` does not dump anything: a real dump and restore of a sleeping process proves CRIU
# works on this kernel and hypervisor (each bounded, so a hang fails here instead of in a test).
criu_smoke_test() (
  # a subshell: its traps and its report of the dumped (killed) sleeper stay here
  smoke=$(mktemp -d /tmp/podmig-criu-smoke.XXXXXX)
  setsid sleep 600 </dev/null >/dev/null 2>&1 &
  sleeper=$!
  trap 'kill -9 "$sleeper" 2>/dev/null; rm -rf "$smoke"' EXIT
  sleep 0.2
  if ! timeout 60 criu dump -t "$sleeper" -D "$smoke" -o dump.log >/dev/null 2>&1; then
    echo "criu dump of a sleeping process failed or hung; the end of its log: $(tail -n 5 "$smoke/dump.log" 2>/dev/null | tr '\n' ' ')"
    exit 1
  fi
  wait "$sleeper" 2>/dev/null
  if ! timeout 60 criu restore -D "$smoke" -d --pidfile "$smoke/restored.pid" -o restore.log >/dev/null 2>&1; then
    echo "criu restore of a sleeping process failed or hung; the end of its log: $(tail -n 5 "$smoke/restore.log" 2>/dev/null | tr '\n' ' ')"
    exit 1
  fi
  restored=$(cat "$smoke/restored.pid")
  kill -9 "$restored"
  [ "$restored" = "$sleeper" ] || { echo "criu restored PID $restored, not $sleeper"; exit 1; }
)
smoke_out=$(criu_smoke_test 2>&1) || die "$(grep -v Killed <<<"$smoke_out")"
log "ok: CRIU $version ($(command -v criu)), $(runc --version | head -n 1), containerd $(containerd --version | awk '{print $3}') (and $(for e in "${CONTAINERD_RELEASES[@]}"; do printf '%s ' "$(containerd_version "$PREFIX/containerd-${e%%:*}")"; done)in $PREFIX)"
