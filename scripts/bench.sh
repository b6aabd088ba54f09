#!/usr/bin/env bash
# Runs FlexCore's store benchmarks (`flexcore-bench appends`) on both backends, then the
# physical limits of the same databases on this machine, so every figure can be quoted as a
# ratio from one run. Extra arguments go to `flexcore-bench appends`.
set -euo pipefail
cd "$(dirname "$0")/.."
LIMITS="${FLEXCORE_LIMITS_DIR:-../shared/bench}"
PG_URL="${FLEXCORE_BENCH_PG_URL:-postgres://postgres@127.0.0.1:5432/test}"
echo "# $(date -u +%FT%TZ) $(uptime)"
cargo build --release -p flexcore-bench
./target/release/flexcore-bench appends --store sqlite "$@"
./target/release/flexcore-bench appends --store "$PG_URL" "$@"
if [ -d "$LIMITS" ]; then
  python3 "$LIMITS/sqlite-limit.py" --duration 5 --repeat 3
  DURATION=5 REPEAT=3 CLIENTS="1 16" CASES="single batch read" READ_ROWS=200000 bash "$LIMITS/pg-limit.sh" "$PG_URL"
else
  echo "no physical-limit scripts at $LIMITS; set FLEXCORE_LIMITS_DIR" >&2
fi
