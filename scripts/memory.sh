#!/usr/bin/env bash
# Peak memory of a cold `find` over a large merged tree.
#
#     scripts/memory.sh [--entries 1000000] [--servers 3] [--dirs 1000] [--keep]
#
# As root: starts K vsftpd servers on 127.0.0.1 (scripts/lib/servers.sh), each serving an
# empty-file tree of ENTRIES/K files in DIRS directories spread over the servers (a directory
# is on one, two or all servers, so the merge is exercised), mounts ftpcircle-fs (release
# build), runs `find MNT | wc -l` cold, checks the count, and reports the daemon's peak RSS
# (VmHWM from /proc) and the bytes per entry above the RSS of the freshly mounted daemon.
# The tree is kept under WORKDIR (default /tmp/ftpcircle-memory) for the next run with the
# same parameters; --keep also leaves the servers' data when done.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib/servers.sh
source scripts/lib/servers.sh

ENTRIES=1000000
K=3
DIRS=1000
KEEP=0
WORK=${WORKDIR:-/tmp/ftpcircle-memory}
while [ $# -gt 0 ]; do
    case $1 in
        --entries) ENTRIES=$2; shift 2 ;;
        --servers) K=$2; shift 2 ;;
        --dirs) DIRS=$2; shift 2 ;;
        --keep) KEEP=1; shift ;;
        *) ftpc_die "unknown argument: $1" ;;
    esac
done

ftpc_need_root
ftpc_ensure_packages
ftpc_ensure_cargo
cargo build --release --quiet
BIN=$PWD/target/release/ftpcircle-fs

MNT=$WORK/mnt
mkdir -p "$WORK/logs" "$MNT" "$WORK/empty"
PIDS=()
cleanup() {
    ftpc_unmount "$MNT" 2>/dev/null || true
    for i in $(seq 1 "$K"); do ftpc_stop_pidfile "$WORK/srv$i.pid" vsftpd 2>/dev/null || true; done
    [ "$KEEP" = 1 ] || rm -rf "$WORK"/srv*
}
trap cleanup EXIT

# Deterministic tree: directory d on servers (d % K) and, for every third one, the next server
# too; its files are split between those servers. The union has DIRS directories and
# ENTRIES files (+ the root).
stamp="$ENTRIES-$K-$DIRS"
if [ "$(cat "$WORK/stamp" 2>/dev/null)" != "$stamp" ]; then
    ftpc_log "generating $ENTRIES files in $DIRS directories over $K servers"
    rm -rf "$WORK"/srv*
    "$FTPC_PYTHON" scripts/lib/flat_tree.py "$WORK" "$ENTRIES" "$K" "$DIRS"
    echo "$stamp" >"$WORK/stamp"
fi
expected=$(( (ENTRIES / DIRS) * DIRS + DIRS + 1 ))

: >"$WORK/serverlist.txt"
for i in $(seq 1 "$K"); do
    port=$(ftpc_free_port)
    chmod 755 "$WORK/srv$i"
    ftpc_vsftpd_conf "$WORK/srv$i" "$port" "$WORK/logs/srv$i.log" "$WORK/empty" >"$WORK/srv$i.conf"
    ftpc_spawn "$WORK/srv$i.pid" "$WORK/logs/srv$i.out" "$FTPC_VSFTPD" "$WORK/srv$i.conf"
    ftpc_wait_banner "$port" 10 || ftpc_die "vsftpd $i did not start"
    echo "127.0.0.1:$port,,,0" >>"$WORK/serverlist.txt"
done
chmod 600 "$WORK/serverlist.txt"

"$BIN" --servers "$WORK/serverlist.txt" --no-index --log-file "$WORK/logs/ftpcircle-fs.log" "$MNT"
pid=$(pgrep -f -n "ftpcircle-fs --servers $WORK/serverlist.txt") || ftpc_die "daemon not found"
rss_kb() { awk -v k="$1" '$1 == k":" {print $2}' "/proc/$pid/status"; }
base=$(rss_kb VmRSS)
start=$(date +%s.%N)
count=$(find "$MNT" | wc -l)
secs=$(echo "$(date +%s.%N) - $start" | bc)
peak=$(rss_kb VmHWM)
ftpc_unmount "$MNT"
result=PASS
[ "$count" -eq "$expected" ] || result=FAIL
per_entry=$(( (peak - base) * 1024 / count ))
cat <<EOF
entries found:     $count (expected $expected) $result
find cold:         ${secs}s
daemon RSS:        ${base} KiB after mount, peak ${peak} KiB ($(( peak / 1024 )) MiB)
bytes per entry:   $per_entry (peak RSS above the freshly mounted daemon, divided by entries)
EOF
[ "$result" = PASS ]
