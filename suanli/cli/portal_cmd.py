"""`suanli serve` (the web portal, and `serve token create|list|revoke`) and `suanli top` (a live terminal view).

The web framework is imported only when `serve` starts the server: token management and `top` need none of it.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from suanli.cli.output import print_json, table
from suanli.errors import UsageError

SERVE_HELP = "run the web portal (jobs, usage, quotas, /metrics); serve token create issues logins"
TOP_HELP = "a live terminal view of jobs and the account's quota (q quits)"


def register_serve(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("serve", parents=[common], help=SERVE_HELP,
                       description="Serve the portal over the same registry and ledger as the CLI. Users log in "
                                   "with a token (serve token create) or, behind the centre's login, through a "
                                   "header that only --trusted-proxy addresses may set.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--proxy-header", metavar="NAME", help="take the user from this header (X-Remote-User), only "
                   "from --trusted-proxy addresses")
    p.add_argument("--trusted-proxy", action="append", default=[], metavar="ADDR",
                   help="address or network of the reverse proxy that sets --proxy-header (repeatable)")
    p.add_argument("--proxy-admin", action="append", default=[], metavar="USER",
                   help="in proxy mode, a user who is an admin (repeatable)")
    p.add_argument("--refresh", type=float, default=5.0, metavar="S",
                   help="ask the backends for fresh states at most every S seconds (default 5)")
    p.add_argument("--secure-cookies", action="store_true", help="mark cookies Secure (behind an HTTPS proxy)")
    verbs = p.add_subparsers(dest="serve_verb", metavar="token")
    t = verbs.add_parser("token", parents=[common], help="create, list or revoke portal tokens")
    tv = t.add_subparsers(dest="token_verb", metavar="create|list|revoke")
    c = tv.add_parser("create", parents=[common], help="issue a token (printed once, as the last word)")
    c.add_argument("--user", "-u", required=True)
    c.add_argument("--admin", action="store_true", help="may change quotas and see everyone's jobs and usage")
    c.add_argument("--account", "-A", action="append", default=[], help="an account the user belongs to "
                   "(repeatable; accounts of the user's jobs and usage count too)")
    ls = tv.add_parser("list", parents=[common], help="tokens issued (never the tokens themselves)")
    ls.add_argument("--json", action="store_true")
    r = tv.add_parser("revoke", parents=[common], help="revoke a token and its sessions")
    r.add_argument("token_id", metavar="ID")


def register_top(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("top", parents=[common], help=TOP_HELP,
                       description="Refreshes in place: one status poll per cluster per refresh, as status does.")
    p.add_argument("--interval", "-n", type=float, default=2.0, metavar="S", help="seconds between refreshes")
    p.add_argument("--cluster", "-c")
    p.add_argument("--account", "-A", help="whose quota bar to show (default: the newest job's account)")
    p.add_argument("--iterations", type=int, metavar="N", help="stop after N refreshes (default: until q)")


def _home() -> Any:
    from suanli.compute.store import home

    return home()


def cmd_serve(args: argparse.Namespace) -> int:
    if getattr(args, "serve_verb", None) == "token":
        return _token(args)
    import ipaddress

    from suanli.portal.data import PortalConfig

    if not 0 < args.port < 65536:
        raise UsageError(f"serve: --port {args.port} is not a TCP port (1-65535)")
    nets = []
    for text in args.trusted_proxy:
        try:
            nets.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise UsageError(f"serve: --trusted-proxy {text!r} is not an address or network (10.0.0.5, "
                             "10.0.0.0/24)") from None
    if args.proxy_header and not nets:
        raise UsageError("serve: --proxy-header needs --trusted-proxy ADDR (the proxy's address): a header from "
                         "anyone else would let them be anyone")
    if args.refresh <= 0:
        raise UsageError(f"serve: --refresh {args.refresh} must be a positive number of seconds")
    cfg = PortalConfig(home=_home(), config=getattr(args, "config", None), proxy_header=args.proxy_header,
                       trusted_proxies=tuple(nets), proxy_admins=frozenset(args.proxy_admin),
                       refresh_s=args.refresh, secure_cookies=args.secure_cookies)
    try:
        import uvicorn

        from suanli.portal.app import create_app
    except ImportError as exc:
        raise UsageError(f"serve needs the portal extra ({exc.name} is missing); pip install 'suanli[portal]'") \
            from None
    if args.host not in ("127.0.0.1", "::1", "localhost"):
        print(f"suanli serve: listening on {args.host}, not loopback: put it behind an HTTPS proxy",
              file=sys.stderr)
    print(f"suanli serve: http://{args.host}:{args.port}/ (registry and ledger under {cfg.home})", file=sys.stderr)
    uvicorn.run(create_app(cfg), host=args.host, port=args.port, log_level="warning", access_log=False,
                proxy_headers=False)
    return 0


def _token(args: argparse.Namespace) -> int:
    from suanli.portal.tokens import TokenStore

    store = TokenStore(_home() / "portal.db")
    verb = getattr(args, "token_verb", None)
    if verb == "create":
        tid, token = store.create(args.user, args.admin, tuple(args.account))
        role = "admin" if args.admin else "user"
        print(f"token {tid} for {role} {args.user} (shown once; store it safely): {token}")
        return 0
    if verb == "list":
        rows = store.list()
        if args.json:
            print_json(rows)
        else:
            sys.stdout.write(table(["ID", "USER", "ADMIN", "ACCOUNTS", "REVOKED"],
                                   [[r["id"], r["user"], "yes" if r["admin"] else "", ",".join(r["accounts"]),  # type: ignore[arg-type]
                                     "yes" if r["revoked"] else ""] for r in rows]))
        return 0
    if verb == "revoke":
        if not store.revoke(args.token_id):
            raise UsageError(f"serve token revoke: no live token {args.token_id!r}; suanli serve token list")
        print(f"revoked token {args.token_id}", file=sys.stderr)
        return 0
    raise UsageError("serve token: give an action: create, list or revoke (suanli serve token --help)")


def cmd_top(args: argparse.Namespace) -> int:
    from suanli.api import Client
    from suanli.portal.top import Top

    if args.interval <= 0:
        raise UsageError(f"top: --interval {args.interval} must be a positive number of seconds")
    client = Client(getattr(args, "config", None))
    if args.cluster:
        client.configs.cluster(args.cluster)  # an unknown name lists the valid ones
    return Top(client, args.interval, args.cluster, args.account).run(args.iterations)
