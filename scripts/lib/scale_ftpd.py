#!/usr/bin/python3
"""Many FTP servers from one process, for scripts/scale.sh (pyftpdlib, one event loop).

Server i (0 <= i < N) listens on 127.1.(i // 250).(i % 250 + 1):PORT and serves a virtual
read-only tree (nothing on disk):

    /shared/m000 .. m009          the same 10 files on every server (mirrors)
    /sNNNN/dKKK/fJJJ              M files of its own, 100 per directory

With --dead-every K (default 10; 0 for none) every K-th server (i % K == K - 1) is dead:
alternately one with no listener at all (connection refused) and one with a silent listener
that never greets (the client waits out its timeout).  `--expect FILE` writes the exact path set a `find` of the merged mount
prints (relative, sorted), and exits.
"""
import argparse
import io
import os
import resource
import socket
import stat
import sys

SHARED = 10
PER_DIR = 100
MTIME = 1_700_000_000


def addr(i):
    return "127.1.%d.%d" % (i // 250, i % 250 + 1)


DEAD_EVERY = 10


def dead(i):
    return DEAD_EVERY > 0 and i % DEAD_EVERY == DEAD_EVERY - 1


def refused(i):
    return dead(i) and (i // DEAD_EVERY) % 2 == 1


def content(i, path):
    # Mirrors (shared/) have the same bytes on every server.
    owner = "shared" if path.startswith("/shared/") else str(i)
    return ("%s:%s\n" % (owner, path)).encode()


class Tree:
    """The virtual tree of one server: directories -> sorted child names."""

    def __init__(self, i, m):
        self.i = i
        self.m = m
        self.top = "s%04d" % i

    def ndirs(self):
        return (self.m + PER_DIR - 1) // PER_DIR

    def children(self, path):
        if path == "/":
            return ["shared", self.top]
        if path == "/shared":
            return ["m%03d" % j for j in range(SHARED)]
        if path == "/" + self.top:
            return ["d%03d" % k for k in range(self.ndirs())]
        parts = path.strip("/").split("/")
        if len(parts) == 2 and parts[0] == self.top and parts[1].startswith("d"):
            k = int(parts[1][1:])
            if k >= self.ndirs():
                return None
            n = min(PER_DIR, self.m - k * PER_DIR)
            return ["f%03d" % j for j in range(n)]
        return None

    def is_file(self, path):
        parent, _, name = path.rpartition("/")
        kids = self.children(parent or "/")
        return kids is not None and name in kids and self.children(path) is None


def expected(n, m):
    out = {".", "./shared"}
    out.update("./shared/m%03d" % j for j in range(SHARED))
    for i in range(n):
        if dead(i):
            continue
        t = Tree(i, m)
        out.add("./" + t.top)
        for d in t.children("/" + t.top):
            out.add("./%s/%s" % (t.top, d))
            for f in t.children("/%s/%s" % (t.top, d)):
                out.add("./%s/%s/%s" % (t.top, d, f))
    return sorted(out)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--servers", type=int, required=True)
    p.add_argument("--entries", type=int, required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--expect")
    p.add_argument("--dead-every", type=int, default=10)
    a = p.parse_args()
    global DEAD_EVERY
    DEAD_EVERY = a.dead_every
    if a.expect:
        with open(a.expect, "w") as f:
            f.write("\n".join(expected(a.servers, a.entries)) + "\n")
        return

    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.filesystems import AbstractedFS, FilesystemError
    from pyftpdlib.handlers import FTPHandler
    from pyftpdlib.ioloop import IOLoop
    from pyftpdlib.servers import FTPServer

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    class VirtualFS(AbstractedFS):
        """Paths are the virtual ones (home is "/"); nothing touches the disk."""

        def tree(self):
            return self.cmd_channel.tree

        def ftp2fs(self, ftppath):
            return self.ftpnorm(ftppath)

        def fs2ftp(self, fspath):
            return fspath

        def validpath(self, path):
            return True

        def realpath(self, path):
            return path

        def isdir(self, path):
            return self.tree().children(path) is not None

        def isfile(self, path):
            return self.tree().is_file(path)

        def islink(self, path):
            return False

        def lexists(self, path):
            return self.isdir(path) or self.isfile(path)

        def chdir(self, path):
            if not self.isdir(path):
                raise FilesystemError("not a directory")
            self.cwd = path

        def listdir(self, path):
            kids = self.tree().children(path)
            if kids is None:
                raise OSError(2, "no such directory")
            return list(kids)

        def stat(self, path):
            if self.isdir(path):
                mode, size = stat.S_IFDIR | 0o555, 0
            elif self.isfile(path):
                mode, size = stat.S_IFREG | 0o444, len(content(self.tree().i, path))
            else:
                raise OSError(2, "no such file")
            return os.stat_result((mode, 0, 0, 1, 0, 0, size, MTIME, MTIME, MTIME))

        lstat = stat

        def getsize(self, path):
            return self.stat(path).st_size

        def getmtime(self, path):
            return MTIME

        def open(self, filename, mode):
            if not self.isfile(filename):
                raise OSError(2, "no such file")
            f = io.BytesIO(content(self.tree().i, filename))
            f.name = filename
            return f

        def get_user_by_uid(self, uid):
            return "ftp"

        def get_group_by_gid(self, gid):
            return "ftp"

    auth = DummyAuthorizer()
    auth.add_anonymous("/", perm="elr")
    ioloop = IOLoop()
    keep = []
    for i in range(a.servers):
        if refused(i):
            continue
        if dead(i):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((addr(i), a.port))
            s.listen(64)
            keep.append(s)
            continue
        handler = type(
            "Handler%d" % i,
            (FTPHandler,),
            {
                "authorizer": auth,
                "abstracted_fs": VirtualFS,
                "banner": "scale server %d ready" % i,
                "tree": Tree(i, a.entries),
                "permit_foreign_addresses": False,
                "passive_ports": None,
            },
        )
        server = FTPServer((addr(i), a.port), handler, ioloop=ioloop)
        server.max_cons = 0
        server.max_cons_per_ip = 0
        keep.append(server)
    print("ready", flush=True)
    ioloop.loop()


if __name__ == "__main__":
    sys.exit(main())
