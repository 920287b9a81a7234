#!/usr/bin/env bash
# Fetches proftpd, pure-ftpd, GNU inetutils ftpd and netkit ftpd for the tests (see ftpc_ensure_ftp_servers in
# scripts/lib/servers.sh) and prints the directory they are unpacked in.
# scripts/test.sh runs this; the test harness runs it too when the directory
# is missing (e.g. `cargo test` without scripts/test.sh).  As root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib/servers.sh
source scripts/lib/servers.sh
ftpc_need_root
ftpc_ensure_ftp_servers
echo "$FTPC_SERVERS_DIR/root"
