"""The portal's routes: HTML for browsers, JSON for ``Accept: application/json``.

Safe by default: every state change is a POST that carries the session's CSRF token (requests authenticated by a
bearer token carry no ambient credential and need none) and comes from this origin; every value is escaped by
Jinja2's autoescape; the Content-Security-Policy allows scripts from /static only (no inline script runs).
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from suanli.errors import SuanliError, UsageError
from suanli.portal.data import PortalConfig, PortalData, forecast
from suanli.portal.tokens import Identity
from suanli.portal.views import HERE, chart, day_aligned, safe_next, template_env

log = logging.getLogger("suanli")
SESSION_COOKIE = "suanli_session"
CSRF_COOKIE = "suanli_csrf"  # proxy mode: what the form token is bound to
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
USAGE_KEYS = ("account", "user", "partition", "accelerator", "cluster", "day", "month")
Handler = Callable[[Request, Identity], Response]


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


class Portal:
    def __init__(self, cfg: PortalConfig) -> None:
        self.cfg = cfg
        self.data = PortalData(cfg)
        self.env = template_env()

    # ------------------------------------------------------------ who is who
    def identify(self, request: Request) -> Identity | None:
        cfg = self.cfg
        host = request.client.host if request.client else None
        if cfg.proxy_header:
            user = request.headers.get(cfg.proxy_header)
            if user is not None:
                if cfg.trusted(host):
                    sid = request.cookies.get(CSRF_COOKIE) or request.state.new_csrf
                    return Identity(user=user.strip(), admin=user.strip() in cfg.proxy_admins, via="proxy", sid=sid)
                log.warning("portal: ignored %s from %s (not a configured proxy address)", cfg.proxy_header, host)
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return cfg.tokens.lookup(auth[7:].strip())
        cookie = request.cookies.get(SESSION_COOKIE)
        return cfg.tokens.session(cookie) if cookie else None

    def guarded(self, handler: Handler, admin: bool = False, post: bool = False) -> Callable[[Request], Any]:
        """The handler behind authentication (401 or the login page), the admin check (403) and, for POSTs,
        the same-origin and CSRF checks (403) -- all before the handler reads or changes anything."""

        async def endpoint(request: Request) -> Response:
            import os

            request.state.new_csrf = os.urandom(16).hex()
            form: dict[str, str] = {}
            if post:
                raw = await request.form()
                form = {k: v for k, v in raw.items() if isinstance(v, str)}
            request.state.form = form
            from starlette.concurrency import run_in_threadpool

            return await run_in_threadpool(self._run, handler, request, admin, post)

        return endpoint

    def _run(self, handler: Handler, request: Request, admin: bool, post: bool) -> Response:
        try:
            who = self.identify(request)
            if who is None:
                if wants_json(request) or request.method != "GET":
                    raise HttpError(401, "authentication required: Authorization: Bearer TOKEN "
                                         "(suanli serve token create), or log in at /login")
                nxt = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(f"/login?next={quote(nxt)}", status_code=303)
            if post:
                self._check_post(request, who)
            if admin and not who.admin:
                raise HttpError(403, f"forbidden: only admins may do this ({who.user} is not an admin)")
            self.data.as_user(who)
            response = handler(request, who)
            if who.via == "proxy" and CSRF_COOKIE not in request.cookies:
                response.set_cookie(CSRF_COOKIE, who.sid, httponly=True, samesite="strict",
                                    secure=self.cfg.secure_cookies)
            return response
        except HttpError as exc:
            return self.error(request, exc.status, exc.message)
        except UsageError as exc:
            return self.error(request, 400, str(exc))
        except SuanliError as exc:
            status = 403 if type(exc).__name__ == "LedgerPermissionError" else 503
            return self.error(request, status, str(exc))

    def _check_post(self, request: Request, who: Identity) -> None:
        if who.via == "token":
            return  # a bearer header: no cross-site page can make a browser send it
        if request.headers.get("sec-fetch-site") == "cross-site":
            raise HttpError(403, "forbidden: cross-site request")
        origin = request.headers.get("origin")
        if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
            raise HttpError(403, f"forbidden: request from another origin ({origin})")
        if not self.cfg.tokens.csrf_ok(who, request.state.form.get("csrf", "")):
            raise HttpError(403, "forbidden: missing or wrong CSRF token (reload the page and try again)")

    # ------------------------------------------------------------ responses
    def page(self, request: Request, who: Identity | None, template: str, payload: Any, status: int = 200,
             **ctx: Any) -> Response:
        if wants_json(request):
            return JSONResponse(payload, status_code=status)
        html = self.env.get_template(template).render(
            who=who, csrf=self.cfg.tokens.csrf(who) if who else "", path=request.url.path, data=payload, **ctx)
        return HTMLResponse(html, status_code=status, headers=self.headers())

    @staticmethod
    def headers() -> dict[str, str]:
        return {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
                "X-Frame-Options": "DENY", "Cache-Control": "no-store"}

    def error(self, request: Request, status: int, message: str) -> Response:
        if wants_json(request) or request.method != "GET" and "text/html" not in request.headers.get("accept", ""):
            return JSONResponse({"error": message}, status_code=status)
        html = self.env.get_template("error.html").render(who=None, csrf="", path="", status=status, message=message)
        return HTMLResponse(html, status_code=status, headers=self.headers())

    # ------------------------------------------------------------ login
    async def login_form(self, request: Request) -> Response:
        html = self.env.get_template("login.html").render(
            who=None, csrf="", path="/login", next=safe_next(request.query_params.get("next")), message="")
        return HTMLResponse(html, headers=self.headers())

    async def login(self, request: Request) -> Response:
        form = await request.form()
        token, nxt = str(form.get("token") or ""), safe_next(str(form.get("next") or ""))
        if request.headers.get("sec-fetch-site") == "cross-site":
            return self.error(request, 403, "forbidden: cross-site login")
        from starlette.concurrency import run_in_threadpool

        who = await run_in_threadpool(self.cfg.tokens.lookup, token.strip(), "session")
        if who is None:
            html = self.env.get_template("login.html").render(who=None, csrf="", path="/login", next=nxt,
                                                              message="unknown or revoked token")
            return HTMLResponse(html, status_code=401, headers=self.headers())
        response = RedirectResponse(nxt, status_code=303)
        response.set_cookie(SESSION_COOKIE, self.cfg.tokens.session_cookie(who), httponly=True, samesite="strict",
                            secure=self.cfg.secure_cookies, max_age=12 * 3600)
        return response

    def logout(self, request: Request, who: Identity) -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    # ------------------------------------------------------------ jobs
    def jobs(self, request: Request, who: Identity) -> Response:
        rows = self.data.visible_rows(who, everything=request.query_params.get("all") == "1")
        infos = self.data.infos(rows)
        items = []
        for i in reversed(infos):
            d = i.to_json()
            d["elapsed_s"] = i.elapsed
            items.append(d)
        return self.page(request, who, "jobs.html", items)

    def _row(self, request: Request, who: Identity) -> Any:
        row = self.data.job(who, request.path_params["job_id"])
        if row is None:
            raise HttpError(404, f"no job {request.path_params['job_id']} that you may see")
        return row

    def job(self, request: Request, who: Identity) -> Response:
        return self.page(request, who, "job.html", self.data.job_detail(self._row(request, who)))

    def cancel(self, request: Request, who: Identity) -> Response:
        row = self._row(request, who)
        self.data.cancel(row)
        if wants_json(request):
            return JSONResponse({"cancelled": row.id})
        return RedirectResponse(f"/jobs/{quote(row.id)}", status_code=303)

    def log(self, request: Request, who: Identity) -> Response:
        row = self._row(request, who)
        stream = request.query_params.get("stream", "stdout")
        if stream not in ("stdout", "stderr"):
            raise HttpError(400, "stream: use stdout or stderr")
        try:
            offset = int(request.query_params.get("offset", "0"))
        except ValueError:
            raise HttpError(400, "offset: a byte offset (an integer)") from None
        return JSONResponse(self.data.log_chunk(row, stream, offset))

    # ------------------------------------------------------------ usage
    def usage(self, request: Request, who: Identity) -> Response:
        q = request.query_params
        by = [k for k in (q.get("by") or "account,month").split(",") if k]
        bad = [k for k in by if k not in USAGE_KEYS]
        if bad:
            raise HttpError(400, f"by: {bad[0]!r} is not a grouping; use some of: {', '.join(USAGE_KEYS)}")
        since = day_aligned(q["since"], "since") if q.get("since") else None
        until = day_aligned(q["until"], "until") if q.get("until") else None
        rows = self.data.usage(who, by, since, until, q.get("cluster") or None, q.get("account") or None)
        if q.get("format") == "csv":
            from suanli.cli.output import csv_cell

            buf = io.StringIO()
            w = csv.writer(buf)
            if rows:
                w.writerow(list(rows[0]))
            for r in rows:
                w.writerow([csv_cell(v) for v in r.values()])
            return Response(buf.getvalue(), media_type="text/csv",
                            headers={"Content-Disposition": 'attachment; filename="suanli-usage.csv"'})
        checks = self.data.quota_checks(who)
        quotas = [{**c.to_json(), "forecast": forecast(c)} for c in checks]
        payload: dict[str, Any] = {"by": by, "rows": rows, "quotas": quotas}
        if who.admin:
            payload["near_quota"] = [c for c in quotas if c["limit"] > 0
                                     and (c["used"] + c["reserved"]) >= 0.8 * c["limit"]]
            payload["sync"] = self.data.sync_marks()
        return self.page(request, who, "usage.html", payload, chart=chart(rows, by),
                         keys=USAGE_KEYS, query=dict(q))

    # ------------------------------------------------------------ quotas
    def quotas(self, request: Request, who: Identity) -> Response:
        checks = [c.to_json() for c in self.data.quota_checks(who)]
        clusters = sorted(self.data.client().configs.clusters) if who.admin else []
        return self.page(request, who, "quotas.html", checks, clusters=clusters)

    def quota_set(self, request: Request, who: Identity) -> Response:
        from suanli.accounting.quota import Quota, parse_accelerator_hours, parse_date, parse_number

        f = request.state.form

        def opt(name: str) -> str | None:
            v = (f.get(name) or "").strip()
            return v or None

        account = opt("account")
        if not account:
            raise HttpError(400, "account: required (the account the quota limits)")
        period = opt("period") or "month"
        if period not in ("month", "total"):
            raise HttpError(400, "period: month or total")
        acc = [x.strip() for x in (opt("accelerator_hours") or "").split(",") if x.strip()]
        num = {k: parse_number(v, k) if (v := opt(k)) is not None else None for k in ("cpu_hours", "charge")}
        start, end = opt("start"), opt("end")
        q = Quota(account=account, user=opt("user"), cluster=opt("cluster"), period=period,
                  start=parse_date(start, "start") if start else None, end=parse_date(end, "end") if end else None,
                  cpu_hours=num["cpu_hours"], accelerator_hours=parse_accelerator_hours(acc), charge=num["charge"])
        if q.cluster:
            self.data.client().configs.cluster(q.cluster)
        saved = self.data.ledger.set_quota(q, who.user)
        if wants_json(request):
            return JSONResponse({"id": saved.id, "account": saved.account}, status_code=201)
        return RedirectResponse("/quotas", status_code=303)

    def quota_delete(self, request: Request, who: Identity) -> Response:
        try:
            qid = int(request.path_params["quota_id"])
        except ValueError:
            raise HttpError(400, "quota id: an integer") from None
        n = self.data.ledger.remove_quotas(quota_id=qid)
        if n == 0:
            raise HttpError(404, f"no quota {qid}")
        if wants_json(request):
            return JSONResponse({"removed": n})
        return RedirectResponse("/quotas", status_code=303)

    def quota_apply(self, request: Request, who: Identity) -> Response:
        f = request.state.form
        cluster = (f.get("cluster") or "").strip()
        if not cluster:
            raise HttpError(400, "cluster: required (the Slurm cluster whose association limits to set)")
        accounts = self.data.client().accounts
        dry = f.get("dry_run") == "1"
        cmds, warnings = accounts.apply_plan(cluster) if dry else accounts.apply(cluster)
        return JSONResponse({"cluster": cluster, "applied": not dry, "commands": cmds, "warnings": warnings})

    # ------------------------------------------------------------ metrics
    def metrics(self, request: Request, who: Identity) -> Response:
        from suanli.cli.output import when
        from suanli.portal.metrics import exposition

        q = request.query_params
        since = when(q["since"], "since") if q.get("since") else None
        until = when(q["until"], "until") if q.get("until") else None
        return Response(exposition(self.data, since, until), media_type="text/plain; version=0.0.4; charset=utf-8")


def create_app(cfg: PortalConfig) -> Starlette:
    p = Portal(cfg)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def root(request: Request) -> Response:
        return RedirectResponse("/jobs", status_code=303)

    g = p.guarded
    routes = [
        Route("/healthz", healthz),
        Route("/", root),
        Route("/login", p.login_form, methods=["GET"]),
        Route("/login", p.login, methods=["POST"]),
        Route("/logout", g(p.logout, post=True), methods=["POST"]),
        Route("/jobs", g(p.jobs)),
        Route("/jobs/{job_id}", g(p.job)),
        Route("/jobs/{job_id}/log", g(p.log)),
        Route("/jobs/{job_id}/cancel", g(p.cancel, post=True), methods=["POST"]),
        Route("/usage", g(p.usage)),
        Route("/quotas", g(p.quotas), methods=["GET"]),
        Route("/quotas", g(p.quota_set, admin=True, post=True), methods=["POST"]),
        Route("/quotas/apply", g(p.quota_apply, admin=True, post=True), methods=["POST"]),
        Route("/quotas/{quota_id}/delete", g(p.quota_delete, admin=True, post=True), methods=["POST"]),
        Route("/metrics", g(p.metrics, admin=True)),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes)
    app.state.portal = p
    return app

