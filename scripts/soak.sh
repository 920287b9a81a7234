#!/usr/bin/env bash
# Soak test: a mount under sustained parallel reads while one server keeps
# failing.  As root on Debian 12:
#
#     scripts/soak.sh [--minutes 10] [--servers 3] [--big-mib 32] [--seg-mib 64]
#                     [--rate-mb 80] [--keep] [--debug]
#
# Starts K anonymous vsftpd servers on 127.0.0.1 (K >= 2), each connection
# capped at --rate-mb MB/s (80 by default, as public mirrors cap; 0: no cap),
# generates data
# (a few big files mirrored on every server, many small files), mounts the
# release build of ftpcircle-fs with --timeout 3 and then, for the given
# number of minutes, runs in parallel:
#
#   * a cp loop copying the big files out of the mount, checking each copy's
#     sha256 against the source; one of them (seg.bin, --seg-mib, 0 for none)
#     is big enough to be read in pieces from all mirrors at once (segmented
#     reads: a capped stream is slow enough alone to start them; uncapped
#     loopback streams are not), so those run while server 1 flaps too;
#   * a grep -r loop over the small files, checking the number of files hit;
#   * two random-pread loops (/usr/bin/python3) checking the bytes read at
#     random offsets of the big files against the source files;
#   * a chaos loop: every ~20 s server 1 (the first in the list, so the one
#     reads prefer; every file it has is mirrored elsewhere) goes down for
#     ~10 s, alternately frozen (SIGSTOP/SIGCONT of its whole process tree)
#     and killed (then started again on the same port);
#   * a kill loop: a second mount of the same serverlist, sharing the first
#     one's listing index file, is mounted, walked with `find`, and killed
#     with SIGKILL after a random 0-3 s (often while its index writer is
#     busy), again and again. The index must stay usable: no remount may find
#     it damaged (moved aside), and `locate` must answer from it at the end.
#
# --keep keeps the work dir (data, server and daemon logs, per-worker stats;
# it is always kept after a failure); --debug runs the daemon with -vv.
#
# Page-cache pages of the mounted files are dropped (posix_fadvise DONTNEED)
# before they are read, so every pass really goes through the daemon.
#
# Reports bytes read and verified, wrong bytes (must be 0), errors by kind,
# and the daemon's open fds and RSS at mount time, after warm-up and at the
# end; then stops the daemon with SIGTERM and checks that it exits 0 within
# 10 s and the mount is gone.  Exits 1 if any byte or hit count was wrong, or if fds or RSS grew
# more than --max-fd-growth (default 32) / --max-rss-growth-mib (default 64)
# between warm-up and the end; 2 on bad arguments or setup failure.
#
# Every loop is bounded by the end time and every command by `timeout`;
# everything started here is stopped by pid on exit (also on Ctrl-C).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib/servers.sh
source "$REPO/scripts/lib/servers.sh"

MINUTES=10
SERVERS=3
BIG_MIB=32
BIG_FILES=3
SEG_MIB=64
RATE_MB=80
SMALL_PER_SERVER=200
SMALL_COMMON=100
MAX_FD_GROWTH=32
MAX_RSS_GROWTH_MIB=64
KEEP=0
VERBOSE=-v
NEEDLE=soak-needle-4471
BIN=${FTPCIRCLE_BIN:-}

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
    exit "${1:-0}"
}

while [ $# -gt 0 ]; do
    case $1 in
    --minutes) MINUTES=${2:?}; shift 2 ;;
    --servers) SERVERS=${2:?}; shift 2 ;;
    --big-mib) BIG_MIB=${2:?}; shift 2 ;;
    --seg-mib) SEG_MIB=${2:?}; shift 2 ;;
    --rate-mb) RATE_MB=${2:?}; shift 2 ;;
    --max-fd-growth) MAX_FD_GROWTH=${2:?}; shift 2 ;;
    --max-rss-growth-mib) MAX_RSS_GROWTH_MIB=${2:?}; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --debug) VERBOSE=-vv; shift ;;
    -h | --help) usage 0 ;;
    *) printf 'unknown argument: %s\n' "$1" >&2; usage 2 ;;
    esac
done
for v in MINUTES SERVERS BIG_MIB SEG_MIB RATE_MB MAX_FD_GROWTH MAX_RSS_GROWTH_MIB; do
    [[ ${!v} =~ ^[0-9]+$ ]] || { echo "--${v,,}: not a number: ${!v}" >&2; exit 2; }
done
in_range() { # in_range NAME VALUE MIN MAX HINT
    if [ "$2" -lt "$3" ] || [ "$2" -gt "$4" ]; then
        echo "$1: must be $3..$4$5" >&2
        exit 2
    fi
}
in_range --minutes "$MINUTES" 1 1440 ""
in_range --servers "$SERVERS" 2 16 " (server 1 needs a mirror)"
in_range --big-mib "$BIG_MIB" 1 4096 ""
in_range --seg-mib "$SEG_MIB" 0 4096 ""
in_range --rate-mb "$RATE_MB" 0 100000 ""

ftpc_need_root
[ -x "$FTPC_VSFTPD" ] || ftpc_die "vsftpd missing ($FTPC_VSFTPD); scripts/test.sh installs it"
command -v fusermount3 >/dev/null || ftpc_die "fusermount3 missing (apt-get install fuse3)"

WORK=$(mktemp -d /tmp/ftpcircle-soak.XXXXXX)
chmod 755 "$WORK"
MNT=$WORK/mnt
MNT2=$WORK/mnt2 # the mount killed with SIGKILL again and again
INDEX=$WORK/index.sqlite # the listing index both mounts share
SRC=$WORK/src # the source of truth the readers compare with
RUN=$WORK/run
STATS=$WORK/stats
mkdir -p "$MNT" "$MNT2" "$SRC" "$RUN" "$STATS"
DPID=
WORKER_PIDS=()

cleanup() {
    local rc=$? p i kids=()
    trap - EXIT INT TERM
    # The workers and what they started (cp, grep, python, sleep), by pid.
    for p in "${WORKER_PIDS[@]}"; do
        mapfile -t -O "${#kids[@]}" kids < <(ftpc_descendants "$p")
        kill -TERM "$p" 2>/dev/null || true
    done
    for p in "${kids[@]}"; do
        kill -TERM "$p" 2>/dev/null || true
    done
    # A frozen server must be thawed before it can be stopped.
    if [ -f "$RUN/frozen" ]; then
        while read -r p; do kill -CONT "$p" 2>/dev/null || true; done <"$RUN/frozen"
    fi
    if ftpc_is_mounted "$MNT"; then
        ftpc_unmount "$MNT" || ftpc_log "warning: $MNT still mounted"
    fi
    if [ -f "$RUN/killed.pid" ]; then
        kill -KILL "$(cat "$RUN/killed.pid")" 2>/dev/null || true
    fi
    if ftpc_is_mounted "$MNT2"; then
        fusermount3 -u -z "$MNT2" 2>/dev/null || true
    fi
    if [ -n "$DPID" ]; then
        for ((i = 0; i < 50; i++)); do
            kill -0 "$DPID" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "$DPID" 2>/dev/null || true
    fi
    for ((i = 1; i <= SERVERS; i++)); do
        ftpc_stop_pidfile "$RUN/srv$i.pid" "$RUN/srv$i.conf" 2>/dev/null || true
    done
    if [ "$KEEP" -eq 1 ] || [ "$rc" -ne 0 ]; then
        ftpc_log "work dir kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------
# binary

if [ -z "$BIN" ]; then
    ftpc_ensure_cargo
    ftpc_log "cargo build --release"
    (cd "$REPO" && timeout 1800 cargo build --release --quiet) || ftpc_die "build failed"
    BIN=$REPO/target/release/ftpcircle-fs
fi
[ -x "$BIN" ] || ftpc_die "no binary at $BIN"

# ---------------------------------------------------------------------------
# data: big/ mirrored everywhere, small/common mirrored everywhere,
# small/sI only on server I (never on server 1, which goes down)

ftpc_log "generating data in $WORK (${BIG_FILES} x ${BIG_MIB} MiB big files)"
timeout 600 "$FTPC_PYTHON" - "$SRC" "$SERVERS" "$SMALL_PER_SERVER" "$SMALL_COMMON" "$NEEDLE" <<'EOF'
import os, random, sys
src, servers, per, common, needle = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
rnd = random.Random(4471)
words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
hits = 0
def small(path, i):
    global hits
    os.makedirs(os.path.dirname(path), exist_ok=True)
    lines = [" ".join(rnd.choice(words) for _ in range(8)) for _ in range(rnd.randrange(1, 60))]
    if i % 7 == 3:
        lines.insert(rnd.randrange(len(lines) + 1), "found " + needle + " here")
        hits += 1
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
for i in range(common):
    small(os.path.join(src, "small/common", "c%04d.txt" % i), i)
for s in range(2, servers + 1):
    for i in range(per):
        small(os.path.join(src, "small/s%d" % s, "f%04d.txt" % i), i)
with open(os.path.join(src, "..", "grep_hits"), "w") as f:
    f.write("%d\n" % hits)
EOF
mkdir -p "$SRC/big"
for ((b = 1; b <= BIG_FILES; b++)); do
    # Sizes differ a little so no two big files are confused.
    head -c $((BIG_MIB * 1048576 + b * 4099)) /dev/urandom >"$SRC/big/big$b.bin"
done
GREP_HITS=$(cat "$WORK/grep_hits")
(cd "$SRC" && grep -r -l -F "$NEEDLE" small | sort >"$WORK/grep.want")
if [ "$SEG_MIB" -gt 0 ]; then
    head -c $((SEG_MIB * 1048576 + 12345)) /dev/urandom >"$SRC/big/seg.bin"
fi
(cd "$SRC/big" && sha256sum ./*.bin | sed 's| \./| |' >"$WORK/big.sha256")

for ((i = 1; i <= SERVERS; i++)); do
    root=$WORK/srv$i
    mkdir -p "$root/big" "$root/small"
    ln "$SRC"/big/*.bin "$root/big/"
    cp -rp "$SRC/small/common" "$root/small/"
    [ "$i" -ge 2 ] && cp -rp "$SRC/small/s$i" "$root/small/"
    chmod -R a+rX,go-w "$root"
done
mkdir -p "$RUN/empty"

# ---------------------------------------------------------------------------
# servers

PORTS=()
start_server() { # start_server I: (re)start server I on its port
    local i=$1
    ftpc_spawn "$RUN/srv$i.pid" "$RUN/srv$i.out" "$FTPC_VSFTPD" "$RUN/srv$i.conf"
    ftpc_wait_banner "${PORTS[$i]}" 10
}
for ((i = 1; i <= SERVERS; i++)); do
    PORTS[i]=$(ftpc_free_port)
    ftpc_vsftpd_conf "$WORK/srv$i" "${PORTS[$i]}" "$RUN/srv$i.log" "$RUN/empty" >"$RUN/srv$i.conf"
    [ "$RATE_MB" -eq 0 ] || echo "anon_max_rate=$((RATE_MB * 1000000))" >>"$RUN/srv$i.conf"
    start_server "$i" || ftpc_die "server $i did not start: $(tail -5 "$RUN/srv$i.out")"
    printf '127.0.0.1:%s,,,0\n' "${PORTS[$i]}" >>"$WORK/serverlist.txt"
done
chmod 600 "$WORK/serverlist.txt"
ftpc_log "servers on ports ${PORTS[*]}; server 1 (port ${PORTS[1]}) will keep failing"

# ---------------------------------------------------------------------------
# mount

"$BIN" -f --servers "$WORK/serverlist.txt" --timeout 3 --cache-ttl 10 --index "$INDEX" \
    --log-file "$WORK/ftpcircle-fs.log" "$VERBOSE" "$MNT" >"$WORK/ftpcircle-fs.out" 2>&1 &
DPID=$!
for ((i = 0; i < 300; i++)); do
    ftpc_is_mounted "$MNT" && break
    kill -0 "$DPID" 2>/dev/null || ftpc_die "ftpcircle-fs exited: $(cat "$WORK/ftpcircle-fs.out")"
    sleep 0.1
done
ftpc_is_mounted "$MNT" || ftpc_die "mount did not appear within 30 s"
ftpc_log "mounted on $MNT (daemon pid $DPID)"

fds() { find "/proc/$DPID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$DPID/status" 2>/dev/null || echo 0; }
FD0=$(fds)
RSS0=$(rss_kb)

START=$(date +%s)
END=$((START + MINUTES * 60))
# The baseline for growth: after the caches and the pool have filled.
WARM=$((MINUTES * 60 / 4))
[ "$WARM" -le 60 ] || WARM=60
WARM_AT=$((START + WARM))

# evict FILE...: drop the page-cache pages of mounted files (errors ignored).
evict() {
    timeout 120 "$FTPC_PYTHON" -c '
import os, sys
for p in sys.argv[1:]:
    try:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    except OSError:
        pass
' "$@" 2>/dev/null || true
}

# errno_of TEXT: a short error name for a tool's error message.
errno_of() {
    case $1 in
    *"Input/output error"*) echo EIO ;;
    *"No such file"*) echo ENOENT ;;
    *"Permission denied"*) echo EACCES ;;
    *"timed out"* | *"Timer expired"*) echo ETIMEDOUT ;;
    *"Resource temporarily unavailable"*) echo EAGAIN ;;
    *"Transport endpoint"*) echo ENOTCONN ;;
    *) echo OTHER ;;
    esac
}

# count_diff A B: differing bytes plus the difference in length.
count_diff() {
    timeout 300 "$FTPC_PYTHON" -c '
import sys
a = open(sys.argv[1], "rb").read(); b = open(sys.argv[2], "rb").read()
print(sum(x != y for x, y in zip(a, b)) + abs(len(a) - len(b)))
' "$1" "$2"
}

cp_worker() {
    local out=$STATS/cp copies=0 bytes=0 wrong=0 errors=0 f dst size want got err kind
    local -A kinds=()
    dst=$WORK/copy.bin
    while [ "$(date +%s)" -lt "$END" ]; do
        for f in "$SRC"/big/*.bin; do
            [ "$(date +%s)" -lt "$END" ] || break
            f=${f##*/}
            evict "$MNT/big/$f"
            rm -f "$dst"
            if err=$(timeout 120 cp "$MNT/big/$f" "$dst" 2>&1); then
                want=$(awk -v f="$f" '$2 == f { print $1 }' "$WORK/big.sha256")
                got=$(sha256sum "$dst" | cut -d' ' -f1)
                size=$(stat -c %s "$dst")
                copies=$((copies + 1))
                if [ "$got" = "$want" ]; then
                    bytes=$((bytes + size))
                else
                    wrong=$((wrong + $(count_diff "$SRC/big/$f" "$dst")))
                    printf 'cp: %s: sha256 mismatch\n' "$f" >>"$STATS/problems"
                fi
            else
                errors=$((errors + 1))
                kind=$(errno_of "$err")
                kinds[$kind]=$((${kinds[$kind]:-0} + 1))
                printf 'cp: %s: %s\n' "$f" "$err" >>"$STATS/problems"
                sleep 0.5
            fi
            # After every copy, so the counts survive if the worker is stopped at the end
            # in the middle of a copy.
            {
                echo "copies=$copies bytes=$bytes wrong=$wrong errors=$errors"
                for kind in "${!kinds[@]}"; do echo "error $kind ${kinds[$kind]}"; done
            } >"$out"
        done
    done
    rm -f "$dst"
}

grep_worker() {
    local out=$STATS/grep passes=0 ok=0 errored=0 mismatch=0 n rc err kind
    local -A kinds=()
    while [ "$(date +%s)" -lt "$END" ]; do
        mapfile -t files < <(cd "$SRC" && find small -type f | sed "s|^|$MNT/|")
        evict "${files[@]}"
        # grep: 0 found, 1 none found, 2 error; timeout: 124.
        rc=0
        timeout 120 grep -r -l -F "$NEEDLE" "$MNT/small" >"$WORK/grep.out" 2>"$WORK/grep.err" || rc=$?
        n=$(wc -l <"$WORK/grep.out")
        passes=$((passes + 1))
        err=$(head -c 500 "$WORK/grep.err")
        if [ -n "$err" ] || [ "$rc" -ge 2 ]; then
            errored=$((errored + 1))
            kind=$(errno_of "$err")
            kinds[$kind]=$((${kinds[$kind]:-0} + 1))
            printf 'grep: rc %s: %s\n' "$rc" "$(head -n 2 "$WORK/grep.err")" >>"$STATS/problems"
            sleep 0.5
        elif [ "$n" -eq "$GREP_HITS" ]; then
            ok=$((ok + 1))
        else
            # No error reported but the wrong answer: a silent failure.
            mismatch=$((mismatch + 1))
            printf '%s grep: %s files hit, want %s (no error reported); missing: %s\n' \
                "$(date +%T)" "$n" "$GREP_HITS" \
                "$(sed "s|^$MNT/||" "$WORK/grep.out" | sort | comm -13 - "$WORK/grep.want" |
                    head -n 3 | tr '\n' ' ')" >>"$STATS/problems"
        fi
        # After every pass, so the counts survive if the worker is stopped mid-pass.
        {
            echo "passes=$passes ok=$ok errored=$errored mismatch=$mismatch"
            for kind in "${!kinds[@]}"; do echo "error $kind ${kinds[$kind]}"; done
        } >"$out"
    done
}

pread_worker() { # pread_worker N
    timeout $((END - $(date +%s) + 120)) "$FTPC_PYTHON" - "$MNT/big" "$SRC/big" "$END" "$1" \
        >"$STATS/pread$1" 2>>"$STATS/problems" <<'EOF'
import errno, os, random, sys, time
mnt, src, end, seed = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
names = sorted(os.listdir(src))
rnd = random.Random(seed)
sizes = {n: os.path.getsize(os.path.join(src, n)) for n in names}
srcfd = {n: os.open(os.path.join(src, n), os.O_RDONLY) for n in names}
fds = {}
reads = nbytes = wrong = errors = opens = 0
kinds = {}
while time.time() < end:
    n = rnd.choice(names)
    size = sizes[n]
    off = rnd.randrange(size)
    length = min(rnd.choice([1, 511, 4096, 65536, 300000, 1 << 20]), size - off)
    data = b""
    try:
        if n not in fds or rnd.random() < 0.02:
            if n in fds:
                os.close(fds.pop(n))
            fds[n] = os.open(os.path.join(mnt, n), os.O_RDONLY)
            opens += 1
        fd = fds[n]
        os.posix_fadvise(fd, off, length, os.POSIX_FADV_DONTNEED)
        # A read may legally return less than asked (the kernel returns what it has when
        # a later page fails); ask for the rest until it is all there, an error, or EOF.
        for _ in range(64):
            if len(data) >= length:
                break
            part = os.pread(fd, length - len(data), off + len(data))
            if not part:
                break
            data += part
    except OSError as e:
        errors += 1
        k = errno.errorcode.get(e.errno, str(e.errno))
        kinds[k] = kinds.get(k, 0) + 1
        print("pread: %s @%d+%d: %s (after %d good bytes)" % (n, off, length, e, len(data)),
              file=sys.stderr)
        if n in fds:
            try:
                os.close(fds.pop(n))
            except OSError:
                pass
        time.sleep(0.2)
        continue
    want = os.pread(srcfd[n], length, off)
    reads += 1
    if data == want:
        nbytes += len(data)
    else:
        # Bytes that differ, plus the missing ones of a read that hit end-of-file early.
        bad = sum(a != b for a, b in zip(data, want)) + abs(len(data) - len(want))
        wrong += bad
        print("pread: %s @%d+%d: %d wrong bytes (got %d bytes, file size %d, fstat size %d)"
              % (n, off, length, bad, len(data), size, os.fstat(fds[n]).st_size), file=sys.stderr)
print("reads=%d bytes=%d wrong=%d errors=%d opens=%d" % (reads, nbytes, wrong, errors, opens))
for k, v in sorted(kinds.items()):
    print("error %s %d" % (k, v))
EOF
}

chaos_worker() {
    local out=$STATS/chaos freezes=0 kills=0 restart_failures=0 cycle=0 p t
    while [ $(($(date +%s) + 20)) -le "$END" ]; do
        sleep 10
        cycle=$((cycle + 1))
        if [ $((cycle % 2)) -eq 1 ]; then
            # Freeze the listener and every session: connections hang.
            # (recorded in a file, so that cleanup can thaw them)
            p=$(cat "$RUN/srv1.pid")
            { echo "$p"; ftpc_descendants "$p"; } >"$RUN/frozen"
            while read -r t; do kill -STOP "$t" 2>/dev/null || true; done <"$RUN/frozen"
            printf '%s freeze server 1\n' "$(date +%T)" >>"$STATS/chaos.log"
            sleep 10
            while read -r t; do kill -CONT "$t" 2>/dev/null || true; done <"$RUN/frozen"
            rm -f "$RUN/frozen"
            freezes=$((freezes + 1))
            printf '%s thaw server 1\n' "$(date +%T)" >>"$STATS/chaos.log"
        else
            # Kill it: connections are refused, sessions drop mid-transfer.
            ftpc_stop_pidfile "$RUN/srv1.pid" "$RUN/srv1.conf" 2>/dev/null
            printf '%s kill server 1\n' "$(date +%T)" >>"$STATS/chaos.log"
            sleep 10
            if start_server 1; then
                printf '%s restart server 1\n' "$(date +%T)" >>"$STATS/chaos.log"
            else
                restart_failures=$((restart_failures + 1))
                printf '%s restart of server 1 failed\n' "$(date +%T)" >>"$STATS/chaos.log"
            fi
            kills=$((kills + 1))
        fi
    done
    echo "freezes=$freezes kills=$kills restart_failures=$restart_failures" >"$out"
}

kill_worker() {
    local out=$STATS/kill kills=0 mounts=0 mount_failures=0 damaged=0 walks=0 pid i
    while [ $(($(date +%s) + 10)) -le "$END" ]; do
        if ! timeout 60 "$BIN" --servers "$WORK/serverlist.txt" --timeout 3 --cache-ttl 10 \
            --index "$INDEX" --log-file "$WORK/killed.log" "$MNT2" >"$WORK/killed.out" 2>&1; then
            mount_failures=$((mount_failures + 1))
            printf 'kill loop: mount failed: %s\n' "$(tail -3 "$WORK/killed.out")" >>"$STATS/problems"
            sleep 2
            continue
        fi
        mounts=$((mounts + 1))
        if grep -q 'moved aside' "$WORK/killed.out"; then
            damaged=$((damaged + 1))
            printf 'kill loop: %s\n' "$(grep 'moved aside' "$WORK/killed.out")" >>"$STATS/problems"
        fi
        pid=$(pgrep -n -f -- "--log-file $WORK/killed.log") || pid=
        [ -n "$pid" ] && echo "$pid" >"$RUN/killed.pid"
        # Walk it in the background and kill the daemon while it works.
        timeout 30 find "$MNT2" >/dev/null 2>&1 &
        i=$!
        sleep "$((RANDOM % 4)).$((RANDOM % 10))"
        if [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null; then
            kills=$((kills + 1))
        fi
        wait "$i" 2>/dev/null && walks=$((walks + 1))
        rm -f "$RUN/killed.pid"
        # A killed FUSE daemon leaves its mount behind ("transport endpoint is not connected").
        for ((i = 0; i < 50; i++)); do
            ftpc_is_mounted "$MNT2" || break
            fusermount3 -u -z "$MNT2" 2>/dev/null || sleep 0.1
        done
    done
    echo "kills=$kills mounts=$mounts mount_failures=$mount_failures damaged=$damaged walks=$walks" >"$out"
}

ftpc_log "soaking for $MINUTES minute(s) until $(date -d "@$END" +%T)"
touch "$STATS/problems"
cp_worker &
WORKER_PIDS+=($!)
grep_worker &
WORKER_PIDS+=($!)
pread_worker 1 &
WORKER_PIDS+=($!)
pread_worker 2 &
WORKER_PIDS+=($!)
chaos_worker &
WORKER_PIDS+=($!)
kill_worker &
WORKER_PIDS+=($!)

while [ "$(date +%s)" -lt "$WARM_AT" ]; do sleep 1; done
FD1=$(fds)
RSS1=$(rss_kb)
ftpc_log "after warm-up: daemon fds $FD1, RSS $RSS1 kB"

# Workers stop by themselves at END; allow for one in-flight command.
for p in "${WORKER_PIDS[@]}"; do
    for ((i = 0; i < (END - $(date +%s) + 180) * 5 && i < 100000; i++)); do
        kill -0 "$p" 2>/dev/null || break
        sleep 0.2
    done
    if kill -0 "$p" 2>/dev/null; then
        ftpc_log "worker $p still running after the end; stopping it"
        kill -TERM "$p" 2>/dev/null || true
    fi
    wait "$p" 2>/dev/null || true
done
WORKER_PIDS=()
# Server 1 is up again (chaos ends with it running); let idle things settle.
sleep 3
kill -0 "$DPID" 2>/dev/null || ftpc_die "the daemon died during the soak: $(tail -20 "$WORK/ftpcircle-fs.log")"
FD2=$(fds)
RSS2=$(rss_kb)

# ---------------------------------------------------------------------------
# report

field() { # field FILE KEY
    sed -n "1s/.*\\b$2=\\([0-9]*\\).*/\\1/p" "$1" 2>/dev/null | grep . || echo 0
}
declare -A ERRS=()
for f in "$STATS"/cp "$STATS"/grep "$STATS"/pread*; do
    [ -f "$f" ] || continue
    while read -r word kind n; do
        [ "$word" = error ] && ERRS[$kind]=$((${ERRS[$kind]:-0} + n))
    done <"$f"
done
CP_BYTES=$(field "$STATS/cp" bytes)
CP_WRONG=$(field "$STATS/cp" wrong)
PR_BYTES=$(($(field "$STATS/pread1" bytes) + $(field "$STATS/pread2" bytes)))
PR_WRONG=$(($(field "$STATS/pread1" wrong) + $(field "$STATS/pread2" wrong)))
PR_READS=$(($(field "$STATS/pread1" reads) + $(field "$STATS/pread2" reads)))
PR_ERRS=$(($(field "$STATS/pread1" errors) + $(field "$STATS/pread2" errors)))
GREP_MISMATCH=$(field "$STATS/grep" mismatch)
WRONG=$((CP_WRONG + PR_WRONG))
FD_GROWTH=$((FD2 - FD1))
RSS_GROWTH_KB=$((RSS2 - RSS1))
ERR_TEXT=
for k in "${!ERRS[@]}"; do ERR_TEXT+="$k=${ERRS[$k]} "; done
LOG_PROBLEMS=$(grep -c ' WARN \| ERROR ' "$WORK/ftpcircle-fs.log" 2>/dev/null || true)
SEGMENTED=$(grep -c 'segmented read from byte' "$WORK/ftpcircle-fs.log" 2>/dev/null || true)
# The index both mounts shared, after all those kills: still answers.
LOCATE_RC=0
timeout 60 "$BIN" locate --servers "$WORK/serverlist.txt" --index "$INDEX" /small/ >/dev/null \
    2>"$WORK/locate.err" || LOCATE_RC=$?
DAMAGED=$(field "$STATS/kill" damaged)

echo
echo "== ftpcircle-fs soak: $SERVERS servers, $MINUTES min, $BIG_FILES x $BIG_MIB MiB mirrored, $(find "$SRC/small" -type f | wc -l) small files, each connection capped at ${RATE_MB:-0} MB/s (0: none) =="
printf 'cp     : %s copies, %s bytes verified, %s wrong bytes, %s errors\n' \
    "$(field "$STATS/cp" copies)" "$CP_BYTES" "$CP_WRONG" "$(field "$STATS/cp" errors)"
printf 'pread  : %s reads, %s bytes verified, %s wrong bytes, %s errors\n' \
    "$PR_READS" "$PR_BYTES" "$PR_WRONG" "$PR_ERRS"
printf 'grep   : %s passes, %s with %s hits, %s with errors, %s silent mismatches\n' \
    "$(field "$STATS/grep" passes)" "$(field "$STATS/grep" ok)" "$GREP_HITS" \
    "$(field "$STATS/grep" errored)" "$GREP_MISMATCH"
printf 'chaos  : %s freezes, %s kills (%s failed restarts) of server 1\n' \
    "$(field "$STATS/chaos" freezes)" "$(field "$STATS/chaos" kills)" "$(field "$STATS/chaos" restart_failures)"
printf 'kill   : %s SIGKILLs of a second mount sharing the index, %s remounts (%s failed), %s found it damaged; locate afterwards: exit %s\n' \
    "$(field "$STATS/kill" kills)" "$(field "$STATS/kill" mounts)" "$(field "$STATS/kill" mount_failures)" \
    "$DAMAGED" "$LOCATE_RC"
printf 'total  : %s bytes read and verified, %s wrong bytes\n' "$((CP_BYTES + PR_BYTES))" "$WRONG"
printf 'errors : %s\n' "${ERR_TEXT:-none}"
printf 'log    : %s WARN/ERROR lines in the daemon log\n' "${LOG_PROBLEMS:-0}"
printf 'pieces : %s segmented reads (big files read from all mirrors at once)\n' "${SEGMENTED:-0}"
printf 'daemon : fds %s (mount) %s (warm) %s (end), growth %s (limit %s)\n' \
    "$FD0" "$FD1" "$FD2" "$FD_GROWTH" "$MAX_FD_GROWTH"
printf 'daemon : RSS %s kB (mount) %s kB (warm) %s kB (end), growth %s kB (limit %s MiB)\n' \
    "$RSS0" "$RSS1" "$RSS2" "$RSS_GROWTH_KB" "$MAX_RSS_GROWTH_MIB"
# Stopping: SIGTERM must unmount and end the daemon with status 0 within seconds.
STOP_T0=$(date +%s%N)
kill -TERM "$DPID" 2>/dev/null || true
for ((i = 0; i < 100; i++)); do
    kill -0 "$DPID" 2>/dev/null || break
    sleep 0.1
done
if kill -0 "$DPID" 2>/dev/null; then
    STOP_RC="still running after 10 s"
else
    STOP_RC=0
    wait "$DPID" || STOP_RC=$?
    DPID=
fi
STOP_MS=$((($(date +%s%N) - STOP_T0) / 1000000))
STILL_MOUNTED=no
if ftpc_is_mounted "$MNT"; then STILL_MOUNTED=yes; fi
printf 'stop   : SIGTERM -> exit status %s after %s ms; still mounted: %s\n' \
    "$STOP_RC" "$STOP_MS" "$STILL_MOUNTED"
if [ -s "$STATS/problems" ]; then
    echo "first problems seen:"
    head -n 10 "$STATS/problems" | sed 's/^/    /'
fi

FAIL=()
[ "$WRONG" -eq 0 ] || FAIL+=("$WRONG wrong bytes")
[ "$GREP_MISMATCH" -eq 0 ] || FAIL+=("$GREP_MISMATCH silent grep mismatches")
[ "$((CP_BYTES + PR_BYTES))" -gt 0 ] || FAIL+=("nothing was read")
[ "$SEG_MIB" -eq 0 ] || [ "${SEGMENTED:-0}" -gt 0 ] || FAIL+=("no segmented read happened")
[ "$DAMAGED" -eq 0 ] || FAIL+=("the index was found damaged $DAMAGED time(s) after a SIGKILL")
[ "$LOCATE_RC" -eq 0 ] || FAIL+=("locate on the shared index: exit $LOCATE_RC ($(head -c 200 "$WORK/locate.err"))")
[ "$FD_GROWTH" -le "$MAX_FD_GROWTH" ] || FAIL+=("fd growth $FD_GROWTH > $MAX_FD_GROWTH")
[ "$RSS_GROWTH_KB" -le $((MAX_RSS_GROWTH_MIB * 1024)) ] || FAIL+=("RSS growth ${RSS_GROWTH_KB} kB > ${MAX_RSS_GROWTH_MIB} MiB")
[ "$STOP_RC" = 0 ] || FAIL+=("SIGTERM: daemon exit status $STOP_RC")
[ "$STILL_MOUNTED" = no ] || FAIL+=("still mounted after SIGTERM")
if [ "${#FAIL[@]}" -eq 0 ]; then
    echo "result : PASS"
else
    printf 'result : FAIL (%s)\n' "$(IFS=';'; echo "${FAIL[*]}")"
    exit 1
fi
