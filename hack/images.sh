#!/usr/bin/env bash
# Builds the two container images from the repository root, tagged as deploy/ and the chart name
# them: $IMAGE_REGISTRY/operator:$VERSION and $IMAGE_REGISTRY/node-agent:$VERSION (VERSION: the
# chart's appVersion). Uses the first builder that works here: docker (with a reachable engine),
# podman, buildah. With none it says which it tried and exits 3 (no builder runs on the
# project's CI machines: the Dockerfiles are checked by tests/Migrate.Install.Tests instead).
#   hack/images.sh            build
#   hack/images.sh --tags     print the two image references and exit
set -uo pipefail
cd "$(dirname "$0")/.."
registry="${IMAGE_REGISTRY:-ghcr.io/pod-migration}"
version="${VERSION:-$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/pod-migration/Chart.yaml)}"
operator="$registry/operator:$version"
agent="$registry/node-agent:$version"
if [ "${1:-}" = "--tags" ]; then
  printf '%s\n%s\n' "$operator" "$agent"
  exit 0
fi

tried=()
builder=()
if command -v docker >/dev/null 2>&1; then
  if docker info >/dev/null 2>&1; then builder=(docker build); else tried+=("docker (client found, no engine reachable)"); fi
else
  tried+=("docker (not installed)")
fi
if [ ${#builder[@]} -eq 0 ]; then
  if command -v podman >/dev/null 2>&1; then builder=(podman build); else tried+=("podman (not installed)"); fi
fi
if [ ${#builder[@]} -eq 0 ]; then
  if command -v buildah >/dev/null 2>&1; then builder=(buildah bud); else tried+=("buildah (not installed)"); fi
fi
if [ ${#builder[@]} -eq 0 ]; then
  echo "make images: no container image builder works on this machine; tried: $(IFS=';'; echo "${tried[*]}" | sed 's/;/; /g')" >&2
  echo "make images: build elsewhere with: docker build -f operator/Dockerfile -t $operator . && docker build -f node-agent/Dockerfile -t $agent ." >&2
  exit 3
fi

set -e
"${builder[@]}" -f operator/Dockerfile -t "$operator" .
"${builder[@]}" -f node-agent/Dockerfile -t "$agent" .
echo "built $operator and $agent"
