#!/usr/bin/env bash
# The listing index, measured: crawl, size per entry, `locate` next to plocate over the same
# paths, `find` after a remount next to a cold and a warm one, and the memory of a mount
# served from the index.
#
#     scripts/index-bench.sh [--entries 1000000] [--servers 3] [--dirs 1000] [--keep]
#                            [--serverlist FILE] [--skip-locate] [--skip-find]
#
# As root on Debian 12. Without --serverlist it starts K vsftpd servers on 127.0.0.1
# (scripts/lib/servers.sh) serving the tree of scripts/memory.sh (ENTRIES empty files in DIRS
# directories spread over the servers; kept under WORKDIR, default /tmp/ftpcircle-memory, so
# both scripts generate it once). With --serverlist FILE it uses those servers as they are
# (for instance servers behind a delay line, to measure at 20 ms RTT); the entry count is then
# what the crawl finds.
#
# Steps (each timed with the release build):
#   1. `ftpcircle-fs index` into a new index file: crawl time; index size and bytes per entry;
#   2. `locate` with four patterns (substring, glob, -i, --regex; best of 3) and the same
#      patterns with plocate over a database `updatedb` built from the mounted tree (so both
#      search the very same paths; plocate is installed if missing);
#   3. `find MNT | wc -l`: cold (a fresh mount with --no-index, as before the index), warm
#      (again on that mount), after a remount from the index within the TTL, and after a
#      remount from the index once it is older than the TTL (served, revalidated in the
#      background); the time the mount from the index takes to come up, and the peak RSS of
#      the daemon served from the index.
# Prints a summary; exit 1 when a count differs between the runs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib/servers.sh
source scripts/lib/servers.sh

ENTRIES=1000000
K=3
DIRS=1000
KEEP=0
LIST=
DO_LOCATE=1
DO_FIND=1
WORK=${WORKDIR:-/tmp/ftpcircle-memory}
while [ $# -gt 0 ]; do
    case $1 in
        --entries) ENTRIES=$2; shift 2 ;;
        --servers) K=$2; shift 2 ;;
        --dirs) DIRS=$2; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --serverlist) LIST=$(realpath "$2"); shift 2 ;;
        --skip-locate) DO_LOCATE=0; shift ;;
        --skip-find) DO_FIND=0; shift ;;
        *) ftpc_die "unknown argument: $1" ;;
    esac
done

ftpc_need_root
ftpc_ensure_packages plocate:plocate updatedb:plocate
ftpc_ensure_cargo
cargo build --release --quiet
BIN=$PWD/target/release/ftpcircle-fs

MNT=$WORK/mnt
IX=$WORK/index.sqlite
mkdir -p "$WORK/logs" "$MNT" "$WORK/empty"
cleanup() {
    ftpc_unmount "$MNT" 2>/dev/null || true
    if [ -z "$LIST" ]; then
        for i in $(seq 1 "$K"); do ftpc_stop_pidfile "$WORK/srv$i.pid" vsftpd 2>/dev/null || true; done
        [ "$KEEP" = 1 ] || rm -rf "$WORK"/srv*
    fi
}
trap cleanup EXIT

if [ -z "$LIST" ]; then
    stamp="$ENTRIES-$K-$DIRS"
    if [ "$(cat "$WORK/stamp" 2>/dev/null)" != "$stamp" ]; then
        ftpc_log "generating $ENTRIES files in $DIRS directories over $K servers"
        rm -rf "$WORK"/srv*
        "$FTPC_PYTHON" scripts/lib/flat_tree.py "$WORK" "$ENTRIES" "$K" "$DIRS"
        echo "$stamp" >"$WORK/stamp"
    fi
    LIST=$WORK/serverlist.txt
    : >"$LIST"
    for i in $(seq 1 "$K"); do
        port=$(ftpc_free_port)
        chmod 755 "$WORK/srv$i"
        ftpc_vsftpd_conf "$WORK/srv$i" "$port" "$WORK/logs/srv$i.log" "$WORK/empty" >"$WORK/srv$i.conf"
        ftpc_spawn "$WORK/srv$i.pid" "$WORK/logs/srv$i.out" "$FTPC_VSFTPD" "$WORK/srv$i.conf"
        ftpc_wait_banner "$port" 10 || ftpc_die "vsftpd $i did not start"
        echo "127.0.0.1:$port,,,0" >>"$LIST"
    done
    chmod 600 "$LIST"
fi

now() { date +%s.%N; }
since() { printf '%.3f' "$(echo "$(now) - $1" | bc)"; }
# best3 CMD...: the best of three wall times of CMD (output discarded), in seconds.
best3() {
    local best= t s
    for _ in 1 2 3; do
        s=$(now)
        "$@" >/dev/null 2>&1 || true
        t=$(since "$s")
        if [ -z "$best" ] || [ "$(echo "$t < $best" | bc)" = 1 ]; then best=$t; fi
    done
    echo "$best"
}
mount_fs() { # mount_fs ARGS...: mount on MNT (daemon), echo its pid
    "$BIN" --servers "$LIST" --log-file "$WORK/logs/ftpcircle-fs.log" "$@" "$MNT"
    pgrep -f -n -- "--servers $LIST --log-file $WORK/logs/ftpcircle-fs.log" || ftpc_die "daemon not found"
}
hwm_kb() { awk '$1 == "VmHWM:" {print $2}' "/proc/$1/status"; }

# 1. crawl
rm -f "$IX" "$IX"-wal "$IX"-shm
s=$(now)
"$BIN" index --servers "$LIST" --index "$IX" --cache-ttl 3600 2>"$WORK/logs/index.err" ||
    ftpc_die "index failed: $(tail -5 "$WORK/logs/index.err")"
crawl_secs=$(since "$s")
crawled_at=$(date +%s)
size=$(stat -c %s "$IX")
# Every path of the merged tree (the root aside).
entries=$("$BIN" locate --servers "$LIST" --index "$IX" --regex '' | wc -l)
per_entry=$((size / (entries > 0 ? entries : 1)))
FAIL=0

# 2. locate vs plocate
PATTERNS=("file-000123" "*/d0004?/file-0000[0-4]*" "-i FILE-000777.DAT" "--regex d0012[0-9]/file-0001[0-9]{2}\\.dat$")
declare -a LOC_T PLOC_T LOC_N PLOC_N
if [ "$DO_LOCATE" = 1 ]; then
    pid=$(mount_fs --index "$IX" --cache-ttl 3600)
    updatedb -l 0 -U "$MNT" -o "$WORK/plocate.db" --prunefs "" --prunepaths "" --prunenames ""
    ftpc_unmount "$MNT"
    for i in "${!PATTERNS[@]}"; do
        # shellcheck disable=SC2206 # split "-i PATTERN" into its words on purpose
        p=(${PATTERNS[$i]})
        LOC_N[i]=$("$BIN" locate --servers "$LIST" --index "$IX" "${p[@]}" | wc -l || true)
        LOC_T[i]=$(best3 "$BIN" locate --servers "$LIST" --index "$IX" "${p[@]}")
        PLOC_N[i]=$(plocate -d "$WORK/plocate.db" "${p[@]}" | wc -l || true)
        PLOC_T[i]=$(best3 plocate -d "$WORK/plocate.db" "${p[@]}")
        [ "${LOC_N[i]}" = "${PLOC_N[i]}" ] || FAIL=1
    done
    plocate_size=$(stat -c %s "$WORK/plocate.db")
fi

# 3. find: cold, warm, remount within the TTL, remount after the TTL
if [ "$DO_FIND" = 1 ]; then
    timed_find() { local s n; s=$(now); n=$(find "$MNT" | wc -l); echo "$n $(since "$s")"; }
    mount_fs --no-index >/dev/null
    read -r n_cold t_cold < <(timed_find)
    read -r n_warm t_warm < <(timed_find)
    ftpc_unmount "$MNT"
    # The cold mount did not touch the index: its listings are the crawl's, as old as the crawl.
    s=$(now)
    pid=$(mount_fs --index "$IX" --cache-ttl 3600)
    t_mount=$(since "$s")
    read -r n_re t_re < <(timed_find)
    rss_re=$(hwm_kb "$pid")
    ftpc_unmount "$MNT"
    # Every indexed listing older than the TTL (but the TTL longer than the walk, so what is
    # measured is serving stale listings while they are revalidated, not a TTL running out
    # during the walk).
    STALE_TTL=30
    while [ $(($(date +%s) - crawled_at)) -le "$STALE_TTL" ]; do sleep 1; done
    pid=$(mount_fs --index "$IX" --cache-ttl "$STALE_TTL")
    read -r n_stale t_stale < <(timed_find)
    ftpc_unmount "$MNT"
    for n in "$n_warm" "$n_re" "$n_stale"; do [ "$n" = "$n_cold" ] || FAIL=1; done
fi

echo
echo "== listing index: $(sed -n '$=' "$LIST") server(s), $entries entries =="
echo "crawl (ftpcircle-fs index):  ${crawl_secs}s"
echo "index file:                  $size bytes, $per_entry bytes per entry"
if [ "$DO_LOCATE" = 1 ]; then
    echo "plocate database:            $plocate_size bytes"
    printf '%-48s %10s %8s %10s %8s\n' pattern "locate s" hits "plocate s" hits
    for i in "${!PATTERNS[@]}"; do
        printf '%-48s %10s %8s %10s %8s\n' "${PATTERNS[$i]}" "${LOC_T[i]}" "${LOC_N[i]}" "${PLOC_T[i]}" "${PLOC_N[i]}"
    done
fi
if [ "$DO_FIND" = 1 ]; then
    echo "find cold (--no-index):      ${t_cold}s ($n_cold paths)"
    echo "find warm (same mount):      ${t_warm}s ($n_warm paths)"
    echo "mount from the index:        ${t_mount}s (opening and checking the index included)"
    echo "find after remount (index):  ${t_re}s ($n_re paths), daemon peak RSS $((rss_re / 1024)) MiB"
    echo "find after remount, stale:   ${t_stale}s ($n_stale paths; index older than --cache-ttl $STALE_TTL: served, revalidated behind)"
fi
[ "$FAIL" = 0 ] || { echo "result: FAIL (counts differ)"; exit 1; }
echo "result: PASS"
