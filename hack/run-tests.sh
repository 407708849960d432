#!/usr/bin/env bash
# Runs every test project of the solution, one after another, and ends with one line:
#   N passed, N failed[, N skipped]
# Per-test results go to the console; TRX files and the figures tests record go to
# artifacts/test-results/. Exit status is non-zero if any test failed or a project did not run.
set -uo pipefail

cd "$(dirname "$0")/.."
results=artifacts/test-results
configuration=${CONFIGURATION:-Debug}
rm -rf "$results"
mkdir -p "$results"
export MIGRATE_FIGURES_FILE="$PWD/$results/figures.txt"
# The test platform leaves a few empty directories in $TMPDIR on every run (not the tests: dotnet
# test --list-tests alone does it); a temporary directory of the run's own is removed at the end.
run_tmp=$(mktemp -d /tmp/podmig-tests.XXXXXX)
trap 'rm -rf "$run_tmp"' EXIT
export TMPDIR="$run_tmp"
# Every sandbox's component logs (operator, agents) are copied here when it is torn down, and kept
# only when a test failed: a failure that does not come back when run alone can still be read.
default_logs="$PWD/$results/sandbox-logs"
export PODMIG_SANDBOX_LOGS="${PODMIG_SANDBOX_LOGS:-$default_logs}"

mapfile -t projects < <(find tests -name '*.Tests.csproj' | sort)
[ ${#projects[@]} -gt 0 ] || { echo "no test projects found" >&2; exit 1; }

broken=()
for project in "${projects[@]}"; do
  name=$(basename "$project" .csproj)
  echo "=== $name"
  # A hung test is killed after 5 minutes and reported, instead of eating the CI budget.
  if ! dotnet test "$project" -c "$configuration" --no-build \
      --blame-hang-timeout 5m \
      --results-directory "$results" \
      --logger "trx;LogFileName=$name.trx" \
      --logger "console;verbosity=normal" 2>&1 \
      | grep -E --line-buffered '^\s+(Passed|Failed|Skipped) |Error Message|^\s{3}\S|Total tests|Passed!|Failed!|error|crash|aborted'; then
    :
  fi
  if [ ! -f "$results/$name.trx" ]; then
    broken+=("$name")
  fi
done

passed=0 failed=0 skipped=0
for trx in "$results"/*.trx; do
  [ -f "$trx" ] || continue
  counters=$(grep -o '<Counters [^>]*>' "$trx" | head -n 1)
  get() { sed -n "s/.* $1=\"\([0-9]*\)\".*/\1/p" <<<"$counters"; }
  total=$(get total); executed=$(get executed); p=$(get passed); f=$(get failed); e=$(get error); t=$(get timeout); a=$(get aborted)
  passed=$((passed + ${p:-0}))
  failed=$((failed + ${f:-0} + ${e:-0} + ${t:-0} + ${a:-0}))
  skipped=$((skipped + ${total:-0} - ${executed:-0}))
done

if [ -s "$MIGRATE_FIGURES_FILE" ]; then
  echo
  echo "Figures recorded by the tests (measured, not asserted):"
  awk -F'\t' '{ printf "  %-16s %-32s %10s %s\n", $1, $2, $3, $4 }' "$MIGRATE_FIGURES_FILE"
fi
# The failed tests again, last, with the first lines of each one's message, so that the tail of
# a long log names them and says why (perl-base is part of every Debian system).
failed_tests=$(for trx in "$results"/*.trx; do
  [ -f "$trx" ] || continue
  perl -0777 -ne '
    my %e = (quot => q("), amp => q(&), lt => q(<), gt => q(>), apos => "\x27");
    sub plain { my $t = shift; $t =~ s/&(quot|amp|lt|gt|apos);/$e{$1}/g; $t =~ s/&#x([0-9A-Fa-f]+);/chr(hex($1))/ge; return $t }
    while (/<UnitTestResult\s([^>]*?outcome="(?:Failed|Error|Timeout|Aborted)"[^>]*)>(.*?)<\/UnitTestResult>/sg) {
      my ($attributes, $body) = ($1, $2);
      my ($name) = $attributes =~ /testName="([^"]*)"/;
      print "  ", plain($name), "\n";
      if ($body =~ /<Message>(.*?)<\/Message>/s) {
        my @lines = grep { /\S/ } split /\n/, plain($1);
        splice @lines, 8 if @lines > 8;
        print map { "      $_\n" } @lines;
      }
    }' "$trx"
done)
if [ -n "$failed_tests" ]; then
  echo
  echo "failed tests:"
  printf '%s\n' "$failed_tests"
fi
if [ ${#broken[@]} -gt 0 ]; then
  echo
  echo "test projects that produced no results (build or host failure): ${broken[*]}"
  failed=$((failed + ${#broken[@]}))
fi

if [ "$failed" -eq 0 ] && [ "$PODMIG_SANDBOX_LOGS" = "$default_logs" ]; then
  rm -rf "$default_logs"
elif [ -d "$PODMIG_SANDBOX_LOGS" ]; then
  echo
  echo "the sandboxes' logs: $PODMIG_SANDBOX_LOGS"
fi

echo
summary="$passed passed, $failed failed"
[ "$skipped" -gt 0 ] && summary+=", $skipped skipped"
echo "$summary"
[ "$failed" -eq 0 ]
