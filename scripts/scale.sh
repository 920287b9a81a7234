#!/usr/bin/env bash
# Many servers in one mount: time to mount, cold `find`, peak RSS, threads and open fds.
#
#     scripts/scale.sh [--servers 1000] [--entries 1000] [--dead-every 10] [--timeout 5]
#                      [--max-total N] [--bin PATH]
#
# As root: one pyftpdlib process (scripts/lib/scale_ftpd.py) serves SERVERS servers on as
# many loopback addresses (127.1.x.y, one port), each with ENTRIES files of its own under
# sNNNN/ plus 10 mirrored files under shared/; every DEAD_EVERY-th server is dead (0: none),
# alternately refusing connections and accepting but never greeting. ftpcircle-fs (release build) mounts them all;
# the script reports how long the mount took to come up (the daemon returns when it is
# usable), a cold `find` (checked against the exact expected path set), a read of a file only
# the last live server has, the daemon's peak RSS (VmHWM) and its peak thread and fd counts
# (sampled every 0.1 s), then one markdown table row. --bin measures another build (e.g. an
# older commit's) instead of this tree's release build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib/servers.sh
source scripts/lib/servers.sh

N=1000
M=1000
TIMEOUT=5
TOTAL=
DEAD_EVERY=10
BIN=
while [ $# -gt 0 ]; do
    case $1 in
        --servers) N=$2; shift 2 ;;
        --entries) M=$2; shift 2 ;;
        --timeout) TIMEOUT=$2; shift 2 ;;
        --max-total) TOTAL=$2; shift 2 ;;
        --dead-every) DEAD_EVERY=$2; shift 2 ;;
        --bin) BIN=$(realpath "$2"); shift 2 ;;
        *) ftpc_die "unknown argument: $1" ;;
    esac
done
[ "$N" -ge 1 ] && [ "$N" -le 60000 ] || ftpc_die "--servers must be between 1 and 60000"

ftpc_need_root
ftpc_ensure_packages
if [ -z "$BIN" ]; then
    ftpc_ensure_cargo
    cargo build --release --quiet
    BIN=$PWD/target/release/ftpcircle-fs
fi

WORK=$(mktemp -d /tmp/ftpcircle-scale.XXXXXX)
MNT=$WORK/mnt
mkdir -p "$MNT"
SAMPLER=
cleanup() {
    [ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null || true
    ftpc_unmount "$MNT" 2>/dev/null || true
    ftpc_stop_pidfile "$WORK/srv.pid" scale_ftpd.py 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# A port free on 127.0.0.1 may be taken on one of the other addresses: try a few.
for try in 1 2 3; do
    PORT=$(ftpc_free_port)
    ftpc_log "serving $N servers x $M entries on 127.1.x.y:$PORT"
    : >"$WORK/srv.out"
    ftpc_spawn "$WORK/srv.pid" "$WORK/srv.out" "$FTPC_PYTHON" scripts/lib/scale_ftpd.py \
        --servers "$N" --entries "$M" --port "$PORT" --dead-every "$DEAD_EVERY"
    for ((i = 0; i < 600; i++)); do
        grep -q '^ready' "$WORK/srv.out" 2>/dev/null && break
        ftpc_pid_matches "$(cat "$WORK/srv.pid")" scale_ftpd.py || break
        sleep 0.1
    done
    grep -q '^ready' "$WORK/srv.out" && break
    ftpc_stop_pidfile "$WORK/srv.pid" scale_ftpd.py
    ftpc_log "scale server did not start (try $try): $(tail -1 "$WORK/srv.out")"
done
grep -q '^ready' "$WORK/srv.out" || ftpc_die "scale server did not start: $(cat "$WORK/srv.out")"
"$FTPC_PYTHON" scripts/lib/scale_ftpd.py --servers "$N" --entries "$M" \
    --dead-every "$DEAD_EVERY" --expect "$WORK/expected"

"$FTPC_PYTHON" - "$N" "$PORT" >"$WORK/serverlist.txt" <<'EOF'
import sys
n, port = int(sys.argv[1]), sys.argv[2]
for i in range(n):
    print("127.1.%d.%d:%s,,,0" % (i // 250, i % 250 + 1, port))
EOF
chmod 600 "$WORK/serverlist.txt"

extra=()
[ -n "$TOTAL" ] && extra=(--max-total-connections "$TOTAL")
start=$(date +%s.%N)
"$BIN" --servers "$WORK/serverlist.txt" --timeout "$TIMEOUT" --log-file "$WORK/daemon.log" \
    "${extra[@]}" "$MNT" 2>"$WORK/mount.err"
mount_s=$(echo "$(date +%s.%N) - $start" | bc)
pid=$(pgrep -f -n "ftpcircle-fs --servers $WORK/serverlist.txt") || ftpc_die "daemon not found"

# Peak threads and fds, sampled while the walk runs (bounded by the daemon's life).
(
    peak_t=0 peak_f=0
    while [ -d "/proc/$pid" ]; do
        t=$(awk '$1 == "Threads:" {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
        f=$(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
        [ "${t:-0}" -gt "$peak_t" ] && peak_t=$t
        [ "$f" -gt "$peak_f" ] && peak_f=$f
        echo "$peak_t $peak_f" >"$WORK/peaks"
        sleep 0.1
    done
) &
SAMPLER=$!

start=$(date +%s.%N)
(cd "$MNT" && find . | LC_ALL=C sort >"$WORK/found")
find_s=$(echo "$(date +%s.%N) - $start" | bc)
LC_ALL=C sort "$WORK/expected" -o "$WORK/expected"
paths=PASS
cmp -s "$WORK/found" "$WORK/expected" || paths=FAIL
last=$((N - 1))
if [ "$DEAD_EVERY" -gt 0 ]; then
    while [ $((last % DEAD_EVERY)) -eq $((DEAD_EVERY - 1)) ]; do last=$((last - 1)); done
fi
top=$(printf 's%04d' "$last")
want="$last:/$top/d000/f000"
got=$(cat "$MNT/$top/d000/f000" || true)
read_ok=PASS
[ "$got" = "$want" ] || read_ok=FAIL
sleep 0.3
kill "$SAMPLER" 2>/dev/null || true
wait "$SAMPLER" 2>/dev/null || true
SAMPLER=
read -r peak_t peak_f <"$WORK/peaks"
rss=$(awk '$1 == "VmHWM:" {print $2}' "/proc/$pid/status")
now_t=$(awk '$1 == "Threads:" {print $2}' "/proc/$pid/status")
unusable=$(grep -c . "$WORK/mount.err" || true)
ftpc_unmount "$MNT"

dead=0
[ "$DEAD_EVERY" -gt 0 ] && dead=$((N / DEAD_EVERY))
cat <<EOF
servers:           $N ($dead dead: $(( (dead + 1) / 2 )) refusing, $((dead / 2)) silent), --timeout $TIMEOUT
mount ready:       ${mount_s}s ($unusable line(s) on stderr)
cold find:         ${find_s}s, $(wc -l <"$WORK/found") paths (expected $(wc -l <"$WORK/expected")) $paths
file on last live: $read_ok
peak RSS:          $((rss / 1024)) MiB
threads:           peak $peak_t (after the walk: $now_t)
open fds:          peak $peak_f

| $N x $M ($dead dead) | ${mount_s} s (timeout $TIMEOUT s) | ${find_s} s, $paths | $((rss / 1024)) MiB | $peak_t | $peak_f |
EOF
[ "$paths" = PASS ] && [ "$read_ok" = PASS ]
