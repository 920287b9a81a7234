# shellcheck shell=bash
# Shared helpers for scripts/test.sh and scripts/demo.sh (sourced, not run).
#
# Everything here binds to loopback only and bounds every wait.

FTPC_PYTHON=/usr/bin/python3
FTPC_VSFTPD=/usr/sbin/vsftpd

ftpc_log() { printf '==> %s\n' "$*" >&2; }
ftpc_die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

ftpc_need_root() {
    [ "$(id -u)" -eq 0 ] || ftpc_die "run this as root (vsftpd and the FUSE tests need it)"
}

# Prints (one per line) the Debian packages the tests and the demo need that
# are not installed yet.
ftpc_missing_packages() {
    local missing=()
    command -v fusermount3 >/dev/null 2>&1 || missing+=(fuse3)
    [ -x "$FTPC_VSFTPD" ] || missing+=(vsftpd)
    { [ -x "$FTPC_PYTHON" ] && "$FTPC_PYTHON" -c 'import pyftpdlib' >/dev/null 2>&1; } ||
        missing+=(python3-pyftpdlib)
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    command -v ps >/dev/null 2>&1 || missing+=(procps)
    # GNU inetutils and netkit ftpd (unpacked by ftpc_ensure_ftp_servers) run in a mount
    # namespace of their own (unshare, mount) and log users in through PAM (pam_ftp,
    # pam_unix, loaded from the system's PAM directory).
    command -v unshare >/dev/null 2>&1 || missing+=(util-linux)
    command -v mount >/dev/null 2>&1 || missing+=(mount)
    compgen -G '/usr/lib/*/security/pam_ftp.so' >/dev/null ||
        compgen -G '/lib/*/security/pam_ftp.so' >/dev/null || missing+=(libpam-modules)
    # A C compiler and linker: rustc links with cc, the ring crate compiles C.
    command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
    printf '%s\n' "${missing[@]}"
}

# Installs whatever is missing (apt-get update only if something is).
# Extra arguments: more "command:package" pairs a caller needs (e.g.
# lftp:lftp), installed when the command is not on PATH.
ftpc_ensure_packages() {
    local pkgs extra
    mapfile -t pkgs < <(ftpc_missing_packages | sed '/^$/d')
    for extra in "$@"; do
        command -v "${extra%%:*}" >/dev/null 2>&1 || pkgs+=("${extra#*:}")
    done
    if [ "${#pkgs[@]}" -eq 0 ]; then
        ftpc_log "system packages: all present"
    else
        ftpc_need_root
        command -v apt-get >/dev/null 2>&1 ||
            ftpc_die "missing packages (${pkgs[*]}) and no apt-get; install them by hand"
        ftpc_log "installing: ${pkgs[*]}"
        # Keep the vsftpd package from starting a system-wide server on port 21
        # while it is installed (only if no policy is in place already).
        local policy=/usr/sbin/policy-rc.d added_policy=0
        if [ ! -e "$policy" ]; then
            printf '#!/bin/sh\nexit 101\n' >"$policy"
            chmod 755 "$policy"
            added_policy=1
        fi
        local rc=0
        {
            DEBIAN_FRONTEND=noninteractive apt-get update -q &&
                DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${pkgs[@]}"
        } || rc=$?
        if [ "$added_policy" -eq 1 ]; then rm -f "$policy"; fi
        [ "$rc" -eq 0 ] || ftpc_die "apt-get failed (status $rc)"
    fi
    # vsftpd runs anonymous sessions as this user (the package creates it).
    id ftp >/dev/null 2>&1 || ftpc_die "user 'ftp' missing (normally created by the vsftpd package)"
    [ -e /dev/fuse ] || ftpc_die "/dev/fuse missing (load the fuse module / pass --device /dev/fuse)"
}

# ---------------------------------------------------------------------------
# proftpd, pure-ftpd, GNU inetutils ftpd and netkit ftpd for the tests.
#
# Their Debian packages conflict with vsftpd's (all "provide" ftp-server),
# so they are not installed: `apt-get download` fetches the .debs (and those of
# their library dependencies that are not installed) and `dpkg -x` unpacks them
# into FTPC_SERVERS_DIR/root.  The harness (tests/common) runs the servers from
# there with LD_LIBRARY_PATH pointing at the unpacked libraries.  The directory
# lives outside the repository so that `cargo clean` and fresh worktrees keep
# it; deleting it is always safe (the next run re-creates it).

FTPC_SERVERS_DIR=${FTPCIRCLE_SERVERS_DIR:-/var/cache/ftpcircle-fs/servers}
# proftpd-mod-crypto has mod_tls; proftpd-core has the daemon, mod_digest.
# inetutils-ftpd (GNU inetutils ftpd, usr/sbin/ftpd) and ftpd-ssl (netkit ftpd,
# usr/sbin/in.ftpd: what Debian's "ftpd" package installs) are the servers
# whose LIST runs `ls` (tests/common/ls_servers.rs).
FTPC_SERVER_PACKAGES=(proftpd-core proftpd-mod-crypto pure-ftpd inetutils-ftpd ftpd-ssl)
# Library dependencies are followed this many levels deep (libmemcached11 ->
# libhashkit2 is the deepest chain in Debian 12).
FTPC_SERVER_DEP_DEPTH=4

# ftpc_servers_ok ROOT: the unpacked servers are complete and start far enough
# to print their version (all their libraries resolve).
ftpc_servers_ok() {
    local root=$1 libs d
    libs="$root/usr/lib"
    # The multiarch library directories (usr/lib/x86_64-linux-gnu on amd64).
    for d in "$root"/usr/lib/*-linux-gnu "$root"/lib/*-linux-gnu; do
        [ -d "$d" ] && libs="$d:$libs"
    done
    [ -x "$root/usr/sbin/proftpd" ] && [ -x "$root/usr/sbin/pure-ftpd" ] &&
        [ -x "$root/usr/bin/pure-pw" ] && [ -f "$root/usr/lib/proftpd/mod_tls.so" ] &&
        [ -f "$root/usr/lib/proftpd/mod_digest.so" ] || return 1
    LD_LIBRARY_PATH=$libs timeout 10 "$root/usr/sbin/proftpd" -v >/dev/null 2>&1 || return 1
    [ -x "$root/usr/sbin/ftpd" ] && [ -x "$root/usr/sbin/in.ftpd" ] || return 1
    ! LD_LIBRARY_PATH=$libs timeout 10 ldd "$root/usr/sbin/pure-ftpd" "$root/usr/bin/pure-pw" \
        "$root/usr/lib/proftpd/mod_tls.so" "$root/usr/sbin/ftpd" "$root/usr/sbin/in.ftpd" 2>&1 |
        grep -q 'not found'
}

# ftpc_missing_lib_deps PKG...: library packages (lib*) that PKG... depend on,
# directly or through each other, and that are not installed.
ftpc_missing_lib_deps() {
    local -A seen=()
    local todo=("$@") next dep depth p
    for ((depth = 0; depth < FTPC_SERVER_DEP_DEPTH && ${#todo[@]} > 0; depth++)); do
        next=()
        for p in "${todo[@]}"; do
            for dep in $(apt-cache depends --no-recommends --no-suggests --no-conflicts \
                --no-breaks --no-replaces --no-enhances "$p" 2>/dev/null |
                awk '$1 == "Depends:" || $1 == "PreDepends:" { print $2 }'); do
                case $dep in lib*) ;; *) continue ;; esac
                [ -z "${seen[$dep]:-}" ] || continue
                seen[$dep]=1
                if ! dpkg-query -W -f='${Status}' "$dep" 2>/dev/null | grep -q 'ok installed'; then
                    echo "$dep"
                    next+=("$dep")
                fi
            done
        done
        todo=("${next[@]}")
    done
}

# Makes sure the servers of FTPC_SERVER_PACKAGES are unpacked in FTPC_SERVERS_DIR/root
# (quick when they are).  Concurrent callers wait for each other (flock).
ftpc_ensure_ftp_servers() {
    local dir=$FTPC_SERVERS_DIR
    if ftpc_servers_ok "$dir/root"; then
        ftpc_log "proftpd, pure-ftpd, inetutils ftpd, netkit ftpd: present in $dir"
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 || ftpc_die "no apt-get: cannot fetch the test FTP servers"
    mkdir -p "$dir"
    (
        flock -w 600 9 || ftpc_die "timed out waiting for the lock on $dir"
        if ftpc_servers_ok "$dir/root"; then exit 0; fi
        local new pkgs deps
        new=$(mktemp -d "$dir/.new.XXXXXX")
        trap 'rm -rf "$new"' EXIT
        chmod 755 "$new"
        mkdir "$new/debs" "$new/root"
        # apt-get download runs as _apt when _apt can write there.
        if id _apt >/dev/null 2>&1; then chown _apt "$new/debs" 2>/dev/null || true; fi
        if ! apt-cache show "${FTPC_SERVER_PACKAGES[@]}" >/dev/null 2>&1; then
            ftpc_log "apt-get update (package lists lack ${FTPC_SERVER_PACKAGES[*]})"
            DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 || ftpc_die "apt-get update failed"
        fi
        mapfile -t deps < <(ftpc_missing_lib_deps "${FTPC_SERVER_PACKAGES[@]}" | sort -u)
        pkgs=("${FTPC_SERVER_PACKAGES[@]}" "${deps[@]}")
        ftpc_log "downloading into $dir: ${pkgs[*]}"
        if ! (cd "$new/debs" && timeout 600 apt-get download -q "${pkgs[@]}") >&2; then
            # Stale package lists name versions the mirror no longer has.
            ftpc_log "apt-get download failed; apt-get update and one more try"
            DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 || ftpc_die "apt-get update failed"
            (cd "$new/debs" && rm -f ./*.deb && timeout 600 apt-get download -q "${pkgs[@]}") >&2 ||
                ftpc_die "apt-get download ${pkgs[*]} failed"
        fi
        local deb
        for deb in "$new/debs"/*.deb; do
            dpkg -x "$deb" "$new/root" || ftpc_die "dpkg -x $deb failed"
        done
        ftpc_servers_ok "$new/root" ||
            ftpc_die "unpacked proftpd/pure-ftpd in $new do not run (missing library?)"
        (cd "$new/debs" && ls) >"$new/root/PACKAGES"
        rm -rf "$dir/root.old"
        if [ -e "$dir/root" ]; then mv "$dir/root" "$dir/root.old"; fi
        mv "$new/root" "$dir/root"
        rm -rf "$dir/root.old"
    ) 9>"$dir/.lock" || exit 1
    ftpc_servers_ok "$dir/root" || ftpc_die "proftpd/pure-ftpd not usable in $dir"
    ftpc_log "proftpd, pure-ftpd: unpacked in $dir ($(tr '\n' ' ' <"$dir/root/PACKAGES"))"
}

# Rust needed to build: edition 2024 came with 1.85.
FTPC_RUST_MIN_MINOR=85

# ftpc_cargo_version CARGO: prints "MAJOR.MINOR" of CARGO (empty if it does
# not run). Bash only, so that it works with any PATH.
ftpc_cargo_version() {
    local out v
    out=$("$1" --version 2>/dev/null) || return 0
    v=${out#cargo }
    v=${v%% *}
    case $v in
    [0-9]*.[0-9]*) printf '%s\n' "${v%.*}" ;;
    esac
}

# ftpc_cargo_ok CARGO: CARGO runs and is Rust >= 1.85.
ftpc_cargo_ok() {
    local v major minor
    v=$(ftpc_cargo_version "$1")
    [ -n "$v" ] || return 1
    major=${v%%.*}
    minor=${v#*.}
    [ "$major" -gt 1 ] || { [ "$major" -eq 1 ] && [ "$minor" -ge "$FTPC_RUST_MIN_MINOR" ]; }
}

# Finds a cargo for Rust >= 1.85 and puts it first on PATH: rustup's
# (~/.cargo/bin) first, then any cargo on PATH. Without one, installs
# Debian's cargo-web/rustc-web (1.96 in bookworm's updates; the plain `cargo`
# package is 0.66, too old) and says so. Sets FTPC_SKIP_LINT=1 when the
# toolchain has no rustfmt/clippy and no rustup to add them (Debian's has
# neither): scripts/test.sh then skips those two steps, never the tests.
#
# FTPC_DRY_RUN=1: only print what would be installed (tests use it with a
# PATH that has no cargo).
ftpc_ensure_cargo() {
    local rustup_cargo="${HOME:-/root}/.cargo/bin/cargo" found="" c v
    FTPC_SKIP_LINT=0
    if ftpc_cargo_ok "$rustup_cargo"; then
        found=$rustup_cargo
        PATH="${HOME:-/root}/.cargo/bin:$PATH"
        export PATH
    elif c=$(command -v cargo) && ftpc_cargo_ok "$c"; then
        found=$c
    fi
    if [ -z "$found" ]; then
        c=$(command -v cargo || true)
        if [ -n "$c" ]; then
            v=$(ftpc_cargo_version "$c")
            ftpc_log "$c is cargo ${v:-(unknown version)}; Rust >= 1.$FTPC_RUST_MIN_MINOR is needed (edition 2024)"
        else
            ftpc_log "no cargo found (neither rustup's $rustup_cargo nor one on PATH)"
        fi
        ftpc_log "installing Rust from Debian: cargo-web and rustc-web (apt-get)"
        if [ "${FTPC_DRY_RUN:-0}" = 1 ]; then
            ftpc_log "dry run: would run apt-get update && apt-get install -y cargo-web rustc-web"
            ftpc_log "dry run: would skip rustfmt and clippy (not packaged with cargo-web)"
            FTPC_SKIP_LINT=1
            return 0
        fi
        ftpc_need_root
        command -v apt-get >/dev/null 2>&1 ||
            ftpc_die "no apt-get: install Rust >= 1.$FTPC_RUST_MIN_MINOR with rustup (https://rustup.rs), then re-run"
        DEBIAN_FRONTEND=noninteractive apt-get update -q &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends cargo-web rustc-web ||
            ftpc_die "apt-get install cargo-web rustc-web failed; install Rust >= 1.$FTPC_RUST_MIN_MINOR with rustup (https://rustup.rs) instead"
        hash -r
        found=$(command -v cargo || true)
        [ -n "$found" ] && ftpc_cargo_ok "$found" ||
            ftpc_die "cargo-web installed, but no cargo >= 1.$FTPC_RUST_MIN_MINOR on PATH"
    fi
    ftpc_log "using $found (cargo $(ftpc_cargo_version "$found"))"
    if [ "${FTPC_DRY_RUN:-0}" = 1 ]; then
        return 0
    fi
    for c in fmt clippy; do
        if ! cargo "$c" --version >/dev/null 2>&1; then
            if command -v rustup >/dev/null 2>&1; then
                ftpc_log "adding rustup component for cargo $c"
                rustup component add "$([ "$c" = fmt ] && echo rustfmt || echo clippy)"
            else
                FTPC_SKIP_LINT=1
            fi
        fi
    done
    if [ "$FTPC_SKIP_LINT" = 1 ]; then
        ftpc_log "note: this toolchain has no rustfmt/clippy (Debian's cargo-web does not package them); skipping those two checks, running every test (rustup adds them)"
    fi
}

# A TCP port on 127.0.0.1 that is free right now.
ftpc_free_port() {
    "$FTPC_PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# ftpc_wait_banner PORT SECONDS: wait until 127.0.0.1:PORT sends "220".
ftpc_wait_banner() {
    local port=$1 secs=$2 i
    for ((i = 0; i < secs * 5; i++)); do
        if timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port && head -c 3 <&3" 2>/dev/null | grep -q '^220'; then
            return 0
        fi
        sleep 0.2
    done
    return 1
}

# ftpc_gen_cert DIR: throw-away CA (DIR/ca.pem) and a server certificate for
# localhost / 127.0.0.1 / ::1 signed by it (DIR/server.pem, DIR/server.key).
ftpc_gen_cert() {
    local d=$1
    mkdir -p "$d"
    openssl req -x509 -new -nodes -newkey rsa:2048 -keyout "$d/ca.key" -out "$d/ca.pem" \
        -days 30 -subj "/CN=ftpcircle-fs demo CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    openssl req -new -nodes -newkey rsa:2048 -keyout "$d/server.key" -out "$d/server.csr" \
        -subj "/CN=localhost" 2>/dev/null
    printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1" \
        "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature,keyEncipherment" \
        "extendedKeyUsage=serverAuth" >"$d/server.ext"
    openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" \
        -set_serial "0x$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')" -days 30 \
        -extfile "$d/server.ext" -out "$d/server.pem" 2>/dev/null
    chmod 600 "$d/ca.key" "$d/server.key"
    chmod 644 "$d/ca.pem" "$d/server.pem"
}

# ftpc_vsftpd_conf ROOT PORT LOGFILE EMPTYDIR [CERT KEY]: prints a vsftpd.conf
# for an anonymous read-only server on 127.0.0.1:PORT (explicit FTPS required
# if CERT and KEY are given).
ftpc_vsftpd_conf() {
    local root=$1 port=$2 log=$3 empty=$4 cert=${5:-} key=${6:-}
    cat <<EOF
listen=YES
listen_ipv6=NO
listen_address=127.0.0.1
listen_port=$port
background=NO
anonymous_enable=YES
no_anon_password=YES
anon_root=$root
anon_world_readable_only=YES
local_enable=NO
write_enable=NO
seccomp_sandbox=NO
secure_chroot_dir=$empty
pasv_enable=YES
connect_from_port_20=NO
use_localtime=NO
force_dot_files=YES
hide_ids=NO
dirmessage_enable=NO
max_per_ip=0
idle_session_timeout=300
xferlog_enable=YES
xferlog_std_format=NO
log_ftp_protocol=YES
syslog_enable=NO
vsftpd_log_file=$log
EOF
    if [ -n "$cert" ]; then
        cat <<EOF
ssl_enable=YES
allow_anon_ssl=YES
force_anon_logins_ssl=YES
force_anon_data_ssl=YES
force_local_logins_ssl=YES
force_local_data_ssl=YES
require_ssl_reuse=YES
ssl_sslv2=NO
ssl_sslv3=NO
ssl_tlsv1=YES
ssl_ciphers=HIGH
rsa_cert_file=$cert
rsa_private_key_file=$key
EOF
    fi
}

# ftpc_spawn PIDFILE OUTFILE CMD...: starts CMD in its own session (so it
# outlives the calling script and can be stopped as a process group) and
# records its pid.  fd 0 goes to OUTFILE too: vsftpd prints start-up errors
# there.
ftpc_spawn() {
    local pidfile=$1 out=$2
    shift 2
    setsid "$@" 0>>"$out" 1>&0 2>&0 &
    echo "$!" >"$pidfile"
}

# ftpc_pid_matches PID NEEDLE: PID is alive and its command line contains NEEDLE.
ftpc_pid_matches() {
    local pid=$1 needle=$2
    [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$needle"
}

# ftpc_descendants PID: pids of all descendants of PID (depth-limited).
ftpc_descendants() {
    local depth=${2:-0} p
    [ "$depth" -lt 8 ] || return 0
    for p in $(ps -o pid= --ppid "$1" 2>/dev/null); do
        echo "$p"
        ftpc_descendants "$p" $((depth + 1))
    done
}

# ftpc_stop_pidfile PIDFILE NEEDLE: stops the server started by ftpc_spawn
# and every process it forked (vsftpd puts each FTP session in a session of
# its own), if the pid still belongs to it (command line contains NEEDLE).
ftpc_stop_pidfile() {
    local pidfile=$1 needle=$2 pid i kids p
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    if [[ "$pid" =~ ^[0-9]+$ ]] && ftpc_pid_matches "$pid" "$needle"; then
        # Stopped, it cannot fork while its children are collected.
        kill -STOP "$pid" 2>/dev/null || true
        kids=$(ftpc_descendants "$pid")
        kill -TERM -- "-$pid" 2>/dev/null || true
        kill -TERM "$pid" 2>/dev/null || true
        kill -CONT "$pid" 2>/dev/null || true
        # (children are checked too: fork keeps the command line)
        for p in $kids; do
            ftpc_pid_matches "$p" "$needle" && kill -TERM "$p" 2>/dev/null || true
        done
        for ((i = 0; i < 50; i++)); do
            ftpc_pid_matches "$pid" "$needle" || break
            sleep 0.1
        done
        for p in "$pid" $kids; do
            ftpc_pid_matches "$p" "$needle" && kill -KILL "$p" 2>/dev/null || true
        done
        ftpc_log "stopped pid $pid ($needle)"
    fi
    rm -f "$pidfile"
}

# ftpc_is_mounted DIR (paths with spaces etc. are not decoded; not needed here)
ftpc_is_mounted() {
    local d
    d=$(realpath -m "$1")
    awk -v d="$d" '$5 == d { found = 1 } END { exit !found }' /proc/self/mountinfo
}

# ftpc_unmount DIR: unmount (bounded), lazily if it is busy.
ftpc_unmount() {
    local d=$1 i
    ftpc_is_mounted "$d" || return 0
    timeout 10 fusermount3 -u "$d" 2>/dev/null || timeout 10 umount "$d" 2>/dev/null ||
        timeout 10 umount -l "$d" || true
    for ((i = 0; i < 50; i++)); do
        ftpc_is_mounted "$d" || return 0
        sleep 0.1
    done
    ftpc_is_mounted "$d" && return 1
    return 0
}
