#!/usr/bin/env bash
# Publishes the native (NativeAOT) executables: podmig-runc, the OCI runtime of the "podmig"
# runtime handler. Output: artifacts/native/podmig-runc (what deploy/node/ installs on a node).
set -euo pipefail
cd "$(dirname "$0")/.."
dotnet publish node-agent/Migrate.RestoreRuntime/Migrate.RestoreRuntime.csproj \
  -c Release -r linux-x64 -o artifacts/native -nologo -clp:ErrorsOnly -p:DebugType=none
rm -f artifacts/native/*.xml artifacts/native/*.dbg
echo "artifacts/native/podmig-runc: $(stat -c %s artifacts/native/podmig-runc) bytes"
