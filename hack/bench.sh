#!/usr/bin/env bash
# make bench: builds in Release and runs the benchmarks (measurements only; nothing is asserted).
# Figures go to the terminal and to artifacts/bench/results.json.
#   hack/bench.sh [emulator|runtime|transfer|migration|controller|scale|groups|checkpoint|connections]... [--sizes 64,256,1024] [--reps 5]
# scale: the operator program with 2,000 pods on 50 nodes (fake agents) and 200 MigrationRequests at once, beside a tenth of that
#   (--scale-nodes, --scale-requests); its CPU, memory and time to decide on every request; docs/benchmarks-scale.md.
# groups: 2, 4 and 8 pods (--group-sizes) of 64 MiB moved as one group MigrationRequest against the same moved one by one; docs/benchmarks-groups.md.
# connections: a server pod with 1, 100, 1000 connections (--connections) moved keeping its address, beside today's new-address move; docs/benchmarks-connections.md.
# checkpoint: a Checkpoint (kept, and exported) against runc checkpoint --leave-running, and Restores from the node and from the archive storage; docs/benchmarks-checkpoint.md.
# migration: ours (Cold, PreCopy) against runc checkpoint / tar / TCP / runc restore in the
# sandbox; also writes artifacts/bench/migration.{json,png}, docs/benchmarks.md and .png.
set -euo pipefail
cd "$(dirname "$0")/.."
export CONFIGURATION=Release
dotnet build Migrate.Operator.sln -c Release -nologo -clp:ErrorsOnly
hack/build-native.sh
dotnet artifacts/bin/Migrate.Benchmarks/release_linux-x64/Migrate.Benchmarks.dll "$@"
