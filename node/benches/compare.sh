#!/usr/bin/env bash
# Measures two vigil binaries with the same benchmark, interleaved one run at a time (old,
# new, old, new, ...) so that the machine's noise hits both alike, and writes a table of
# medians and new/old ratios. BENCHMARKS.md is left as it was: the benchmark rewrites its
# section on every run, so the file is put back afterwards.
#
#   node/benches/compare.sh OLD_VIGIL NEW_VIGIL BENCH RUNS OUT_DIR
#
# BENCH is pg_failover, redis_failover or dc_cut (dc_cut needs root: network namespaces).
# OUT_DIR receives old.log, new.log (every run's figures) and compare.md.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "$#" -ne 5 ]; then
    echo "usage: $0 OLD_VIGIL NEW_VIGIL BENCH RUNS OUT_DIR" >&2
    exit 2
fi
old=$(realpath "$1") new=$(realpath "$2") bench=$3 runs=$4 out=$5
case "$bench" in pg_failover | redis_failover | dc_cut) ;; *)
    echo "BENCH must be pg_failover, redis_failover or dc_cut, not '$bench'" >&2
    exit 2
    ;;
esac
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || { echo "RUNS must be a positive number, not '$runs'" >&2; exit 2; }
for binary in "$old" "$new"; do
    [ -x "$binary" ] || { echo "not an executable: $binary" >&2; exit 2; }
done

mkdir -p "$out"
saved=$(mktemp)
cp BENCHMARKS.md "$saved"
trap 'cp "$saved" BENCHMARKS.md; rm -f "$saved"' EXIT
: >"$out/old.log"
: >"$out/new.log"
cargo bench -p vigil --bench "$bench" --no-run

for run in $(seq 1 "$runs"); do
    for side in old new; do
        binary=$old
        [ "$side" = new ] && binary=$new
        echo "== $bench run $run of $runs: $side ($binary)"
        VIGIL_BIN=$binary VIGIL_BENCH_RUNS=1 cargo bench -q -p vigil --bench "$bench" 2>/dev/null |
            grep -E ' run 1: ' | sed "s/ run 1: / run $run: /" | tee -a "$out/$side.log"
    done
done

python3 - "$out" "$bench" "$runs" "$old" "$new" <<'PY'
import re, statistics, sys
out, bench, runs, old, new = sys.argv[1:]

def figures(path):
    """Every run's named figures, as {series: {figure: [values]}}."""
    table = {}
    for line in open(path):
        series, _, rest = line.partition(" run ")
        rest = rest.split(": ", 1)[1]
        if "RunTimes" in rest:
            pairs = re.findall(r"(\w+): ([0-9.]+)", rest)
        else:
            pairs = [(name.strip(), value) for name, value in re.findall(r"([a-z' ]+?) ([0-9.]+) ms", rest)]
        for name, value in pairs:
            table.setdefault(series.strip(), {}).setdefault(name, []).append(float(value))
        named = dict(pairs)
        if "decided" in named and "client_first_write" in named:
            # What vigil itself takes once the cluster has decided: the detection before it
            # steps with the probe interval, and its noise hides this part in the totals.
            acted = float(named["client_first_write"]) - float(named["decided"])
            table.setdefault(series.strip(), {}).setdefault("decided_to_client_write", []).append(acted)
    return table

before, after = figures(f"{out}/old.log"), figures(f"{out}/new.log")
lines = [
    f"## {bench}: old and new binary, interleaved\n",
    f"{runs} runs each, one at a time: old, new, old, new, ... Old: `{old}`; new: `{new}`.",
    "Milliseconds, median (max); ratio is new median / old median.\n",
    "| series | figure | old | new | ratio |",
    "|---|---|---|---|---|",
]
for series, named in before.items():
    for name, values in named.items():
        theirs = after.get(series, {}).get(name, [])
        if not theirs:
            continue
        a, b = statistics.median(values), statistics.median(theirs)
        ratio = f"{b / a:.2f}" if a > 0 else "-"
        lines.append(f"| {series} | {name} | {a:.0f} ({max(values):.0f}) | {b:.0f} ({max(theirs):.0f}) | {ratio} |")
text = "\n".join(lines) + "\n"
open(f"{out}/compare.md", "w").write(text)
print(text)
PY
