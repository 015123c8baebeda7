#!/usr/bin/env bash
# Run the shared SIPp presence harness (../shared/bench, see its README.md)
# with Kamailio 5.6 (memory-only) as the baseline and presenced as "ours",
# interleaved, and copy the tables into bench/results/.
#
#   BENCH_MODE=quick|full   harness --mode (default quick)
#   BENCH_REPEAT=N          interleaved repeats; the tables quote medians
#                           (default 1 for quick, 3 for full)
#   BENCH_SCENARIOS=A,B,..  subset of scenarios (default all: A,B,C,D,E)
#   BENCH_CHILDREN=8[,2]    Kamailio -n values (default 8)
#   BENCH_STORAGE=memory|sqlite|memory,sqlite
#                           memory: Kamailio memory-only vs presenced memory
#                           (subs_db_mode=0, publ_cache=2); sqlite: Kamailio
#                           SQLite write-back (WITH_SQLITE) vs presenced SQLite
#                           write-back (subs_db_mode=2, publ_cache=1,
#                           db_update_period=10, as Kamailio's config); both:
#                           one harness run each (default memory)
#   BENCH_WORKERS=N         presenced --workers N (default 1, the server's own
#                           default: least CPU per unit; 2 uses both cores
#                           for the highest maximum rate)
#   BENCH_EXTRA_ARGS="..."  extra run.py options (word-split)
#   PRESENCED_BENCH_HARNESS path to the harness (default ../shared/bench
#                           relative to the repo root)
#   BENCH_SKIP_INSTALL=1    do not apt-get install missing packages
#
# Raw per-step logs (errors.txt, server.log, stat.csv ...) stay in
# bench/runs/<date>-<mode>/ (git-ignored); results.md/results.json are copied
# to bench/results/<date>-<mode>/ and results.md also to bench/results/LATEST.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

MODE="${BENCH_MODE:-quick}"
case "$MODE" in quick|full) ;; *) echo "BENCH_MODE must be quick or full (got '$MODE')" >&2; exit 2;; esac
if [ "$MODE" = full ]; then REPEAT="${BENCH_REPEAT:-3}"; else REPEAT="${BENCH_REPEAT:-1}"; fi
SCENARIOS="${BENCH_SCENARIOS:-A,B,C,D,E}"
CHILDREN="${BENCH_CHILDREN:-8}"
WORKERS="${BENCH_WORKERS:-1}"
VENV="${VENV:-$ROOT/.venv}"
VENV="$(cd "$VENV" && pwd)"
PRESENCED="$VENV/bin/presenced"

# ---------------------------------------------------------------- packages
need_pkgs=()
for p in kamailio kamailio-presence-modules kamailio-sqlite-modules sip-tester; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        need_pkgs+=("$p")
    fi
done
if [ "${#need_pkgs[@]}" -gt 0 ]; then
    if [ -n "${BENCH_SKIP_INSTALL:-}" ]; then
        echo "missing packages: ${need_pkgs[*]} (BENCH_SKIP_INSTALL set)" >&2; exit 2
    fi
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    echo "== installing ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q
    # --no-install-recommends: the kamailio package must not pull in and start
    # extra services; the harness starts kamailio itself.
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need_pkgs[@]}"
fi
# A Debian install may have started the packaged kamailio service on 5060.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet kamailio 2>/dev/null; then
    echo "note: the system kamailio service is running; stopping it so that 127.0.0.1:5060 is free"
    systemctl stop kamailio || true
fi
command -v sipp >/dev/null || { echo "sipp not found after install" >&2; exit 2; }
[ -x /usr/sbin/kamailio ] || { echo "/usr/sbin/kamailio not found after install" >&2; exit 2; }
[ -x "$PRESENCED" ] || { echo "$PRESENCED not found: run 'make venv' first" >&2; exit 2; }

# ---------------------------------------------------------------- harness
HARNESS="${PRESENCED_BENCH_HARNESS:-../shared/bench}"
case "$HARNESS" in /*) ;; *) HARNESS="$ROOT/$HARNESS";; esac
[ -f "$HARNESS/run.py" ] || { echo "harness not found: $HARNESS/run.py (set PRESENCED_BENCH_HARNESS)" >&2; exit 2; }
HARNESS="$(cd "$HARNESS" && pwd)"
# run.py only writes to --out (and its default runs/ when --out is not given),
# so a read-only harness works as is.  Copy it only if it is not readable.
if [ ! -r "$HARNESS/run.py" ]; then
    echo "harness not readable: $HARNESS" >&2; exit 2
fi

STAMP="$(date +%Y%m%d-%H%M%S)"
STORAGE="${BENCH_STORAGE:-memory}"
BASE_CMD="$PRESENCED serve --listen udp:{host}:{port} --listen tcp:{host}:{port} --set presence_xml.force_active=1 --log-level warning --workers $WORKERS"
# shellcheck disable=SC2206
EXTRA=(${BENCH_EXTRA_ARGS:-})

# run_one LABEL KAMAILIO_VARIANT SERVER_CMD: one harness run into
# bench/runs/<stamp>-<mode>LABEL and bench/results/<stamp>-<mode>LABEL.
run_one() {
    local label="$1" kam="$2" cmd="$3"
    local rundir="$ROOT/bench/runs/$STAMP-$MODE$label" resdir="$ROOT/bench/results/$STAMP-$MODE$label"
    mkdir -p "$rundir" "$resdir"
    echo "== harness $HARNESS, mode $MODE, repeat $REPEAT, scenarios $SCENARIOS, $kam vs presenced --workers $WORKERS, raw logs in $rundir"
    set +e
    python3 "$HARNESS/run.py" --mode "$MODE" --repeat "$REPEAT" --scenarios "$SCENARIOS" \
        --servers "$kam,ours" --children "$CHILDREN" --baseline "$kam/c${CHILDREN%%,*}" \
        --server-name presenced --server-cmd "$cmd" \
        --out "$rundir" "${EXTRA[@]}"
    local rc=$?
    set -e
    local copied=0 f
    for f in results.md results.json; do
        if [ -f "$rundir/$f" ]; then cp "$rundir/$f" "$resdir/$f"; copied=1; fi
    done
    if [ -f "$resdir/results.md" ]; then
        {
            echo "<!-- bench/run-vs-kamailio.sh, mode $MODE, storage $kam, presenced --workers $WORKERS, repeat $REPEAT, $STAMP; raw logs: bench/runs/$STAMP-$MODE$label/ -->"
            echo "Results directory: bench/results/$STAMP-$MODE$label/"
            echo
            cat "$resdir/results.md"
        } > "$ROOT/bench/results/LATEST$label.md"
    fi
    if [ "$copied" = 0 ]; then rmdir "$resdir" 2>/dev/null || true; fi
    echo "== results: $resdir (raw: $rundir), harness exit $rc"
    return "$rc"
}

status=0
IFS=, read -r -a storages <<< "$STORAGE"
for st in "${storages[@]}"; do
    case "$st" in
    memory)
        run_one "" kamailio-mem "$BASE_CMD --db-url memory" || status=$?
        ;;
    sqlite)
        # The same write-back shape as the harness's kamailio-sqlite config:
        # subscriptions written back every 10 s, publications written through.
        run_one "-sqlite" kamailio-sqlite "$BASE_CMD --db-url sqlite://{workdir}/presenced.sqlite --set presence.subs_db_mode=2 --set presence.publ_cache=1 --set presence.db_update_period=10" || status=$?
        ;;
    *)
        echo "BENCH_STORAGE: unknown storage '$st' (memory, sqlite)" >&2; exit 2
        ;;
    esac
done
exit "$status"
