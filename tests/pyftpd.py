#!/usr/bin/python3
"""Read-only FTP server for the ftpcircle-fs tests and demo (pyftpdlib).

Serves ROOT on HOST:PORT.  With --user/--password it accepts only that
account (the password may contain commas, quotes, spaces); with --anonymous
it accepts anonymous logins.  Every command and reply is logged to --log.
Only read permissions are granted ("elr").

--also-host H (repeatable) serves on H:PORT too, from the same process and event loop (many
"servers" on loopback addresses for one process); --also-user NAME=ROOT (repeatable) adds an
account with the same password and its own root.
"""
import argparse
import logging
import resource

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--root", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user")
    p.add_argument("--password", default="")
    p.add_argument("--anonymous", action="store_true")
    p.add_argument("--log", required=True)
    p.add_argument("--banner", default="ftpcircle test pyftpdlib ready")
    p.add_argument("--also-host", action="append", default=[])
    p.add_argument("--also-user", action="append", default=[])
    a = p.parse_args()
    if not a.user and not a.anonymous:
        p.error("need --user or --anonymous")

    handler = logging.FileHandler(a.log, encoding="utf-8", errors="backslashreplace")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)

    auth = DummyAuthorizer()
    if a.user:
        auth.add_user(a.user, a.password, a.root, perm="elr")
    if a.anonymous:
        auth.add_anonymous(a.root, perm="elr")
    for spec in a.also_user:
        name, _, home = spec.partition("=")
        auth.add_user(name, a.password, home, perm="elr")

    class Handler(FTPHandler):
        authorizer = auth
        # Keep non-UTF-8 file names byte-faithful in both directions.
        unicode_errors = "surrogateescape"
        banner = a.banner
        permit_foreign_addresses = False

    # All on the default event loop: serve_forever below serves every one of them. Its
    # connection limit counts every socket of that loop (listeners too), so with many hosts
    # only the file descriptor limit applies.
    servers = [FTPServer((h, a.port), Handler) for h in [a.host] + a.also_host]
    if a.also_host:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    for server in servers:
        server.max_cons = 0 if a.also_host else 256
        server.max_cons_per_ip = 0
    servers[0].serve_forever(handle_exit=True)


if __name__ == "__main__":
    main()
