#!/usr/bin/env bash
# make demo: a live migration in the local sandbox cluster (see README). Runs as root after
# `make prereqs build`; stops and removes everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
configuration=${CONFIGURATION:-Debug}
exec dotnet "artifacts/bin/Migrate.Sandbox/${configuration,,}_linux-x64/Migrate.Sandbox.dll" "$@"
