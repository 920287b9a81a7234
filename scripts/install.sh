#!/usr/bin/env bash
# Installs ftpcircle-fs in one command:
#
#     bash scripts/install.sh [--prefix DIR] [--no-build]
#
# builds the release binary (cargo build --release) unless --no-build, then installs
#   PREFIX/bin/ftpcircle-fs                       the binary (PREFIX: /usr/local)
#   SBINDIR/mount.ftpcircle-fs -> the binary      so `mount -t ftpcircle-fs` works (SBINDIR: /sbin,
#                                                 where mount(8) looks for helpers)
#   PREFIX/share/man/man1/ftpcircle-fs.1          man ftpcircle-fs
#   PREFIX/share/bash-completion/completions/ftpcircle-fs
#   PREFIX/share/zsh/site-functions/_ftpcircle-fs
#   PREFIX/share/fish/vendor_completions.d/ftpcircle-fs.fish
#   PREFIX/share/doc/ftpcircle-fs/                serverlist.txt.sample and the systemd examples
# fstab lines of type fuse.ftpcircle-fs need only the binary on mount.fuse3's PATH
# (/usr/local/bin is on it). Environment: DESTDIR stages the whole tree under another root
# (for packaging); FTPCIRCLE_BIN installs that binary instead of building one; SBINDIR
# overrides where the mount helper goes. Nothing outside these paths is touched.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

prefix=/usr/local
build=1
while [ $# -gt 0 ]; do
    case "$1" in
    --prefix)
        [ $# -ge 2 ] || { echo "install.sh: --prefix needs a directory" >&2; exit 2; }
        prefix=$2
        shift 2
        ;;
    --prefix=*) prefix=${1#--prefix=}; shift ;;
    --no-build) build=0; shift ;;
    -h | --help)
        sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$prefix" in
/*) ;;
*) echo "install.sh: --prefix must be an absolute path, not $prefix" >&2; exit 2 ;;
esac
sbindir=${SBINDIR:-/sbin}
dest=${DESTDIR:-}

bin=${FTPCIRCLE_BIN:-target/release/ftpcircle-fs}
if [ -z "${FTPCIRCLE_BIN:-}" ] && [ "$build" -eq 1 ]; then
    # shellcheck source=scripts/lib/servers.sh
    source scripts/lib/servers.sh
    ftpc_ensure_cargo
    echo "==> cargo build --release" >&2
    cargo build --release
fi
[ -x "$bin" ] || { echo "install.sh: no binary at $bin (build it, or drop --no-build)" >&2; exit 1; }

put() { # mode source target
    install -D -m "$1" "$2" "$dest$3"
    echo "installed $3"
}
put 755 "$bin" "$prefix/bin/ftpcircle-fs"
mkdir -p "$dest$sbindir"
ln -sfn "$prefix/bin/ftpcircle-fs" "$dest$sbindir/mount.ftpcircle-fs"
echo "installed $sbindir/mount.ftpcircle-fs -> $prefix/bin/ftpcircle-fs"
put 644 man/ftpcircle-fs.1 "$prefix/share/man/man1/ftpcircle-fs.1"
put 644 contrib/completions/ftpcircle-fs.bash "$prefix/share/bash-completion/completions/ftpcircle-fs"
put 644 contrib/completions/_ftpcircle-fs "$prefix/share/zsh/site-functions/_ftpcircle-fs"
put 644 contrib/completions/ftpcircle-fs.fish "$prefix/share/fish/vendor_completions.d/ftpcircle-fs.fish"
put 644 serverlist.txt.sample "$prefix/share/doc/ftpcircle-fs/serverlist.txt.sample"
for unit in contrib/systemd/*; do
    put 644 "$unit" "$prefix/share/doc/ftpcircle-fs/systemd/$(basename "$unit")"
done
"$dest$prefix/bin/ftpcircle-fs" --version
