#!/usr/bin/env bash
# The test command: on a fresh Debian 12 machine, as root,
#
#     bash scripts/test.sh [extra cargo test args]
#
# installs what is missing (fuse3 vsftpd python3-pyftpdlib openssl curl,
# procps, and gcc if there is no C compiler; apt-get update runs only if
# something is missing), fetches proftpd, pure-ftpd, GNU inetutils ftpd and
# netkit ftpd into /var/cache/ftpcircle-fs/servers (apt-get download + dpkg -x, since their
# packages conflict with vsftpd's; FTPCIRCLE_SERVERS_DIR overrides the place),
# then runs rustfmt, clippy and the test suite.
# Rust >= 1.85 (edition 2024): a rustup toolchain is preferred; without one,
# Debian's cargo-web/rustc-web are installed (they lack rustfmt and clippy, so
# those two steps are skipped with a note; every test still runs).
# The integration tests start their own FTP servers on 127.0.0.1 and ::1 and
# mount the filesystem on temp dirs; nothing outside the repository, $TMPDIR
# and that cache directory is touched.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib/servers.sh
source scripts/lib/servers.sh

ftpc_need_root
ftpc_ensure_packages
ftpc_ensure_ftp_servers
export FTPCIRCLE_SERVERS_DIR="$FTPC_SERVERS_DIR"
ftpc_ensure_cargo

export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

if [ "$FTPC_SKIP_LINT" = 1 ]; then
    ftpc_log "skipping cargo fmt --check and cargo clippy (no rustfmt/clippy in this toolchain)"
else
    ftpc_log "cargo fmt --check"
    cargo fmt --all -- --check

    ftpc_log "cargo clippy --all-targets -- -D warnings"
    cargo clippy --all-targets -- -D warnings
fi

ftpc_log "cargo test (build)"
cargo test --no-run

ftpc_log "cargo test"
# The tests bound their own waits; this is only a last-resort guard.
timeout --kill-after=30 900 cargo test --no-fail-fast "$@"

ftpc_log "all checks passed"
