"""Who is who: API tokens an admin issues (`suanli serve token create`), stored only as SHA-256 hashes; signed
session cookies a token is exchanged for at the login form; CSRF tokens bound to the session.

Tokens carry 256 random bits, so one unsalted SHA-256 is enough to make the stored table useless to a reader
(a slow password hash protects guessable secrets, which these are not). The signing key is made once and kept
in the same file (mode 0600)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from suanli.errors import UsageError

PREFIX = "sl_"
SESSION_S = 12 * 3600
_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    user_name TEXT NOT NULL,
    admin INTEGER NOT NULL,
    accounts TEXT NOT NULL DEFAULT '[]',
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS secret (key BLOB NOT NULL);
"""


@dataclass(frozen=True)
class Identity:
    """The user a request runs as, and how it proved it (``token``, ``session`` or ``proxy``)."""

    user: str
    admin: bool
    via: str
    accounts: tuple[str, ...] = ()
    sid: str = ""  # what the CSRF token is bound to (the session, or the proxy mode's CSRF cookie)
    token_id: str = field(default="", compare=False)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenStore:
    """The portal's own small SQLite file (``$SUANLI_HOME/portal.db``): tokens and the signing key."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._key: bytes | None = None

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists()
        conn = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        if new:
            os.chmod(self.path, 0o600)  # hashes and the signing key: the owner's only
        conn.executescript(_SCHEMA)
        return conn

    # ------------------------------------------------------------ tokens
    def create(self, user: str, admin: bool, accounts: tuple[str, ...] = ()) -> tuple[str, str]:
        """A new token for ``user``: (its id, the token itself, shown once)."""
        if not user or not user.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise UsageError(f"serve token create: --user {user!r} must be a login name (letters, digits, . _ -)")
        token = PREFIX + _b64(os.urandom(32))
        tid = os.urandom(4).hex()  # never starts with "-" (an id is given on the command line)
        conn = self._connect()
        try:
            conn.execute("INSERT INTO tokens (id, hash, user_name, admin, accounts, created_at) VALUES (?,?,?,?,?,?)",
                         (tid, _hash(token), user, int(admin), json.dumps(list(accounts)), time.time()))
        finally:
            conn.close()
        return tid, token

    def list(self) -> list[dict[str, object]]:
        conn = self._connect()
        try:
            rows = conn.execute("SELECT id, user_name, admin, accounts, created_at, revoked_at FROM tokens "
                                "ORDER BY created_at").fetchall()
        finally:
            conn.close()
        return [{"id": r[0], "user": r[1], "admin": bool(r[2]), "accounts": json.loads(r[3]), "created_at": r[4],
                 "revoked": r[5] is not None} for r in rows]

    def revoke(self, token_id: str) -> bool:
        conn = self._connect()
        try:
            cur = conn.execute("UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                               (time.time(), token_id))
            return cur.rowcount > 0
        finally:
            conn.close()

    def lookup(self, token: str, via: str = "token", sid: str = "") -> Identity | None:
        """The identity of a live token, or None (unknown or revoked)."""
        if not token.startswith(PREFIX) or len(token) > 200:
            return None
        return self._by("hash", _hash(token), via, sid)

    def _by(self, column: str, value: str, via: str, sid: str) -> Identity | None:
        conn = self._connect()
        try:
            r = conn.execute(f"SELECT id, user_name, admin, accounts FROM tokens WHERE {column} = ? "
                             "AND revoked_at IS NULL", (value,)).fetchone()
        finally:
            conn.close()
        if r is None:
            return None
        return Identity(user=r[1], admin=bool(r[2]), via=via, accounts=tuple(json.loads(r[3])), sid=sid,
                        token_id=r[0])

    # ------------------------------------------------------------ signing
    def key(self) -> bytes:
        with self._lock:
            if self._key is None:
                conn = self._connect()
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    r = conn.execute("SELECT key FROM secret").fetchone()
                    if r is None:
                        r = (os.urandom(32),)
                        conn.execute("INSERT INTO secret (key) VALUES (?)", r)
                    conn.execute("COMMIT")
                finally:
                    conn.close()
                self._key = bytes(r[0])
            return self._key

    def sign(self, text: str) -> str:
        return _b64(hmac.new(self.key(), text.encode(), hashlib.sha256).digest())

    def session_cookie(self, ident: Identity, now: float | None = None) -> str:
        """A cookie naming the token it was exchanged for: revoking the token ends its sessions too."""
        body = _b64(json.dumps({"t": ident.token_id, "s": _b64(os.urandom(12)),
                                "e": int((now or time.time()) + SESSION_S)}).encode())
        return f"{body}.{self.sign('session|' + body)}"

    def session(self, cookie: str) -> Identity | None:
        body, _, mac = cookie.partition(".")
        if not body or not hmac.compare_digest(mac, self.sign("session|" + body)):
            return None
        try:
            data = json.loads(_unb64(body))
            token_id, sid, expires = str(data["t"]), str(data["s"]), float(data["e"])
        except (ValueError, KeyError, TypeError):
            return None
        if expires < time.time():
            return None
        return self._by("id", token_id, "session", sid)

    def csrf(self, ident: Identity) -> str:
        """The form token of this session (or proxy CSRF cookie): a cross-site page cannot read it."""
        return self.sign(f"csrf|{ident.via}|{ident.user}|{ident.sid}")

    def csrf_ok(self, ident: Identity, given: str) -> bool:
        return bool(given) and hmac.compare_digest(given, self.csrf(ident))
