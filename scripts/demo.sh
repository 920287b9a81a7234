#!/usr/bin/env bash
# ftpcircle-fs demo for people without FTP servers.  As root on Debian 12:
#
#     scripts/demo.sh [MOUNTPOINT]      # default /tmp/ftpcircle-demo/mnt
#     scripts/demo.sh stop              # unmount and stop the demo servers
#
# Installs what is missing, builds the release binary, creates sample data in
# /tmp/ftpcircle-demo/srv1..srv3, starts three FTP servers on 127.0.0.1:
#
#     srv1  vsftpd, plain FTP, anonymous               (priority 1)
#     srv2  vsftpd, explicit FTPS, anonymous, own CA   (priority 2)
#     srv3  pyftpdlib, user "demo" with a password     (priority 3)
#
# writes /tmp/ftpcircle-demo/serverlist.txt, mounts the merged tree and shows
# find / grep / cp on it.  The servers and the mount stay up after the script
# ends; "stop" kills exactly the processes recorded in the pid files.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib/servers.sh
source "$REPO/scripts/lib/servers.sh"

DEMO=${FTPCIRCLE_DEMO_DIR:-/tmp/ftpcircle-demo}
RUN=$DEMO/run
LOGS=$DEMO/logs
BIN=${FTPCIRCLE_BIN:-$REPO/target/release/ftpcircle-fs}
S3_USER=demo
S3_PASS='s3cret,"demo"'
WORD=penguin

csv_quote() { # quote a CSV field: pa,ss"word -> "pa,ss""word"
    local s=${1//\"/\"\"}
    printf '"%s"' "$s"
}

stop_demo() {
    local mnt candidates=("${1:-$DEMO/mnt}")
    if [ -f "$RUN/mountpoint" ]; then
        candidates+=("$(cat "$RUN/mountpoint")")
    fi
    for mnt in "${candidates[@]}"; do
        if ftpc_is_mounted "$mnt"; then
            ftpc_log "unmounting $mnt"
            ftpc_unmount "$mnt" || ftpc_log "warning: $mnt is still mounted"
        fi
    done
    # The daemon exits by itself once unmounted; wait for it (bounded), then
    # kill it only if it is still there.  It is recognised by the exact
    # serverlist path of this demo on its command line.
    local pid i
    for ((i = 0; i < 50; i++)); do
        pid=$(daemon_pid || true)
        [ -z "$pid" ] && break
        sleep 0.2
    done
    pid=$(daemon_pid || true)
    if [ -n "$pid" ]; then
        ftpc_log "ftpcircle-fs (pid $pid) still running; killing it"
        kill -TERM "$pid" 2>/dev/null || true
    fi
    ftpc_stop_pidfile "$RUN/srv1.pid" "$RUN/srv1.conf"
    ftpc_stop_pidfile "$RUN/srv2.pid" "$RUN/srv2.conf"
    ftpc_stop_pidfile "$RUN/srv3.pid" "$DEMO/srv3"
    rm -f "$RUN/mountpoint"
}

# pid of the ftpcircle-fs daemon serving this demo's serverlist, if any.
daemon_pid() {
    local f pid
    for f in $(grep -lsaF -- "$DEMO/serverlist.txt" /proc/[0-9]*/cmdline 2>/dev/null); do
        pid=${f#/proc/}
        pid=${pid%/cmdline}
        if [ "$pid" != "$$" ] && ftpc_pid_matches "$pid" "ftpcircle-fs "; then
            echo "$pid"
            return 0
        fi
    done
    return 1
}

make_data() {
    ftpc_log "creating sample data in $DEMO/srv1..srv3"
    rm -rf "$DEMO/srv1" "$DEMO/srv2" "$DEMO/srv3"
    mkdir -p "$DEMO/srv1/pub/common" "$DEMO/srv1/docs" \
        "$DEMO/srv2/pub" "$DEMO/srv2/docs/guides" \
        "$DEMO/srv3/pub/common" "$DEMO/srv3/docs" "$DEMO/srv3/music"
    # srv1: plain vsftpd, highest priority
    echo "Welcome to srv1 (plain FTP, priority 1)." >"$DEMO/srv1/pub/README.txt"
    echo "shared directory, file from srv1" >"$DEMO/srv1/pub/common/from-srv1.txt"
    printf 'The %s lives in the Antarctic.\nThe camel does not.\n' "$WORD" >"$DEMO/srv1/docs/animals.txt"
    echo "meeting notes, nothing to see" >"$DEMO/srv1/docs/notes.txt"
    # the same 4 MiB file on srv1 and srv2: one file in the mount (a mirror)
    head -c 4194304 /dev/urandom >"$DEMO/srv1/pub/big-mirror.bin"
    # cp -p: same size and same time, so the two copies are mirrors
    cp -p "$DEMO/srv1/pub/big-mirror.bin" "$DEMO/srv2/pub/big-mirror.bin"
    # srv2: FTPS
    echo "only on srv2, fetched over TLS" >"$DEMO/srv2/pub/tls-only.txt"
    printf 'How to feed a %s: fish.\n' "$WORD" >"$DEMO/srv2/docs/guides/feeding.txt"
    # srv3: pyftpdlib with a login
    echo "shared directory, file from srv3" >"$DEMO/srv3/pub/common/from-srv3.txt"
    printf '%s\n' "Pinguin Polka" "March of the ${WORD}s" >"$DEMO/srv3/music/playlist.txt"
    # same name as srv1's docs/animals.txt but a different size: srv1 wins,
    # so this text (and its match) is hidden in the mount
    printf 'srv3 version, hidden by srv1: %s %s %s\n' "$WORD" "$WORD" "$WORD" >"$DEMO/srv3/docs/animals.txt"
    find "$DEMO/srv1" "$DEMO/srv2" "$DEMO/srv3" -type d -exec chmod 755 {} +
    find "$DEMO/srv1" "$DEMO/srv2" "$DEMO/srv3" -type f -exec chmod 644 {} +
}

start_servers() {
    mkdir -p "$RUN" "$LOGS" "$RUN/empty"
    chmod 755 "$DEMO" "$RUN/empty"
    ftpc_log "generating a throw-away CA and server certificate in $DEMO/tls"
    ftpc_gen_cert "$DEMO/tls"

    local p1 p2 p3 i
    p1=$(ftpc_free_port)
    p2=$p1
    p3=$p1
    for ((i = 0; i < 20 && p2 == p1; i++)); do p2=$(ftpc_free_port); done
    for ((i = 0; i < 20 && (p3 == p1 || p3 == p2); i++)); do p3=$(ftpc_free_port); done

    ftpc_vsftpd_conf "$DEMO/srv1" "$p1" "$LOGS/srv1.log" "$RUN/empty" >"$RUN/srv1.conf"
    ftpc_vsftpd_conf "$DEMO/srv2" "$p2" "$LOGS/srv2.log" "$RUN/empty" \
        "$DEMO/tls/server.pem" "$DEMO/tls/server.key" >"$RUN/srv2.conf"

    ftpc_log "starting srv1: vsftpd on 127.0.0.1:$p1"
    ftpc_spawn "$RUN/srv1.pid" "$LOGS/srv1.out" "$FTPC_VSFTPD" "$RUN/srv1.conf"
    ftpc_log "starting srv2: vsftpd (explicit FTPS) on 127.0.0.1:$p2"
    ftpc_spawn "$RUN/srv2.pid" "$LOGS/srv2.out" "$FTPC_VSFTPD" "$RUN/srv2.conf"
    ftpc_log "starting srv3: pyftpdlib on 127.0.0.1:$p3 (user $S3_USER)"
    ftpc_spawn "$RUN/srv3.pid" "$LOGS/srv3.out" "$FTPC_PYTHON" "$REPO/tests/pyftpd.py" \
        --root "$DEMO/srv3" --port "$p3" --user "$S3_USER" --password "$S3_PASS" \
        --log "$LOGS/srv3.log"

    local ports=("$p1" "$p2" "$p3") n
    for n in 1 2 3; do
        if ! ftpc_wait_banner "${ports[n - 1]}" 15; then
            cat "$LOGS/srv$n.out" >&2 || true
            ftpc_die "srv$n did not answer on 127.0.0.1:${ports[n - 1]} within 15 s (see $LOGS; stop: $0 stop)"
        fi
    done
    ftpc_log "checking FTPS with curl --ssl-reqd --cacert $DEMO/tls/ca.pem"
    curl --silent --show-error --noproxy '*' --max-time 20 --ssl-reqd --cacert "$DEMO/tls/ca.pem" \
        -o /dev/null "ftp://127.0.0.1:$p2/pub/tls-only.txt" ||
        ftpc_die "FTPS check failed (see $LOGS/srv2.log)"

    cat >"$DEMO/serverlist.txt" <<EOF
# ftpcircle-fs demo: server,user,pass,tlstoggle (first line = highest priority)
127.0.0.1:$p1,,,0
127.0.0.1:$p2,,,1
127.0.0.1:$p3,$S3_USER,$(csv_quote "$S3_PASS"),0
EOF
    chmod 600 "$DEMO/serverlist.txt"
}

run() { # echo a command, then run it (bounded)
    printf '\n$ %s\n' "$*"
    timeout 60 "$@"
}

main() {
    if [ "${1:-}" = "stop" ]; then
        ftpc_need_root
        stop_demo "${2:-}"
        ftpc_log "demo stopped (data left in $DEMO; rm -rf $DEMO to remove it)"
        return 0
    fi
    case "${1:-}" in -h | --help)
        sed -n '2,16p' "${BASH_SOURCE[0]}"
        return 0
        ;;
    esac
    local mnt
    mnt=$(realpath -m "${1:-$DEMO/mnt}")

    ftpc_need_root
    ftpc_ensure_packages getfattr:attr
    if [ -n "${FTPCIRCLE_DEMO_SKIP_BUILD:-}" ] && [ -x "$BIN" ]; then
        ftpc_log "using existing $BIN"
    else
        ftpc_ensure_cargo
        ftpc_log "cargo build --release"
        (cd "$REPO" && cargo build --release)
    fi
    [ -x "$BIN" ] || ftpc_die "$BIN was not built"

    # A previous demo run: take it down first.
    stop_demo "$mnt"
    trap 'ftpc_log "demo failed; clean up with: $0 stop"' ERR

    mkdir -p "$DEMO"
    make_data
    start_servers

    mkdir -p "$mnt"
    echo "$mnt" >"$RUN/mountpoint"
    ftpc_log "mounting at $mnt"
    if ! timeout 60 setsid -w "$BIN" --servers "$DEMO/serverlist.txt" --ca-file "$DEMO/tls/ca.pem" \
        --log-file "$LOGS/ftpcircle-fs.log" "$mnt"; then
        tail -n 30 "$LOGS/ftpcircle-fs.log" >&2 2>/dev/null || true
        ftpc_die "mount failed; servers are still running: scripts/demo.sh stop"
    fi
    ftpc_is_mounted "$mnt" || ftpc_die "$mnt is not mounted"

    echo
    echo "The serverlist (priority = line order):"
    sed 's/^/    /' "$DEMO/serverlist.txt"

    run find "$mnt"
    echo "# pub/ and pub/common/ are merged from several servers; big-mirror.bin is on"
    echo "# srv1 and srv2 with the same size, so it shows up once."

    run ls -l "$mnt/pub"

    run grep -rl "$WORD" "$mnt" || true
    run cat "$mnt/docs/animals.txt"
    echo "# docs/animals.txt is srv1's copy: srv3's bigger one (with more ${WORD}s) is hidden."

    run getfattr -d -m - "$mnt/docs/animals.txt"
    echo "# where it comes from: every server with the name, the copy shown, the hidden one."
    run cat "$mnt/.ftpcircle/status"
    echo "# .ftpcircle is not listed (find and grep -r never walk into it), but it is there."
    local view
    # srv3's view: the third "view" of status.json (one row per server, serverlist order).
    view=$(grep -o '"view": "[^"]*"' "$mnt/.ftpcircle/status.json" | sed -n '3s/"view": "\(.*\)"/\1/p')
    run cat "$mnt/.ftpcircle/status.json"
    run cat "$mnt/$view/docs/animals.txt"
    echo "# srv3's own copy, byte-exact, through its view of the server alone."
    run "$BIN" check --servers "$DEMO/serverlist.txt" --ca-file "$DEMO/tls/ca.pem" || true

    rm -f "$DEMO/copy.bin"
    run cp "$mnt/pub/big-mirror.bin" "$DEMO/copy.bin"
    run cmp "$DEMO/copy.bin" "$DEMO/srv1/pub/big-mirror.bin"
    echo "# identical to the original (4 MiB)"
    run cat "$mnt/pub/tls-only.txt"
    echo "# (fetched over FTPS)"

    cat <<EOF

The mount stays up. Try: ls -l $mnt/pub ; touch $mnt/x (read-only: EROFS)
Logs: $LOGS   Sample data: $DEMO/srv1 .. srv3
Unmount only:                fusermount3 -u $mnt
Unmount and stop servers:    $REPO/scripts/demo.sh stop
EOF
}

main "$@"
