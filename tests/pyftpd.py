#!/usr/bin/python3
"""Read-only FTP server for the ftpcircle-fs tests and demo (pyftpdlib).

Serves ROOT on HOST:PORT.  With --user/--password it accepts only that
account (the password may contain commas, quotes, spaces); with --anonymous
it accepts anonymous logins.  Every command and reply is logged to --log.
Only read permissions are granted ("elr").
"""
import argparse
import logging

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

    class Handler(FTPHandler):
        authorizer = auth
        # Keep non-UTF-8 file names byte-faithful in both directions.
        unicode_errors = "surrogateescape"
        banner = a.banner
        permit_foreign_addresses = False

    server = FTPServer((a.host, a.port), Handler)
    server.max_cons = 256
    server.max_cons_per_ip = 0
    server.serve_forever(handle_exit=True)


if __name__ == "__main__":
    main()
