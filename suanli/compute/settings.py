"""``settings.yaml``: the default cluster, the ledger, polling and routing choices, and their environment
overrides. Apart from config.py because they are one user's or centre's preferences, not a cluster."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from suanli.compute.config_checks import _choice, _float, _get, _mapping, _name, _str, _time
from suanli.errors import ConfigError
from suanli.yamlfile import Path_, Source

LEDGER_ERROR_POLICIES = ("deny", "allow")
SETTINGS_KEYS = ("ledger", "on_ledger_error", "status_poll_max_s", "default_cluster", "routing")
ROUTING_KEYS = ("prefer", "max_wait", "clusters", "timeout")
ROUTING_PREFER = ("earliest", "cheapest")
#: The cluster (and partition) name that asks suanli to route: no config may take it.
AUTO = "auto"


@dataclass(frozen=True)
class Settings:
    ledger: str | None = None
    on_ledger_error: str = "deny"
    status_poll_max_s: float = 30.0
    default_cluster: str = "local"
    routing: Routing = field(default_factory=lambda: Routing())


@dataclass(frozen=True)
class Routing:
    """``routing:`` in settings.yaml: how ``--cluster auto`` chooses (see ``compute/route.py``)."""

    prefer: str = "earliest"  # earliest | cheapest (the cheapest that starts within max_wait)
    max_wait: timedelta | None = None
    #: The clusters routing may choose from, in order; None: every configured cluster (the built-in local
    #: one only while it is the default cluster, so a login node is never picked behind a centre's back).
    clusters: tuple[str, ...] | None = None
    timeout_s: float = 15.0  # the bound on asking every candidate's scheduler, all at once


def parse_settings(src: Source) -> Settings:
    data = src.data or {}
    data = _mapping(src, data, (), SETTINGS_KEYS, "settings")
    return Settings(
        ledger=_get(src, data, (), "ledger", _str(src), None),
        on_ledger_error=_get(src, data, (), "on_ledger_error", _choice(src, LEDGER_ERROR_POLICIES), "deny"),
        status_poll_max_s=_get(src, data, (), "status_poll_max_s", _float(src), 30.0),
        default_cluster=_get(src, data, (), "default_cluster", _name(src), "local"),
        routing=_routing(src, data.get("routing")),
    )


def _routing(src: Source, raw: Any) -> Routing:
    if raw is None:
        return Routing()
    path: Path_ = ("routing",)
    data = _mapping(src, raw, path, ROUTING_KEYS, "routing")
    clusters = None
    if "clusters" in data:
        value = data["clusters"]
        if not isinstance(value, list) or not value or len(value) > 256:
            src.fail(path + ("clusters",), "expected a list of 1 to 256 cluster names")
        clusters = tuple(_name(src)(v, path + ("clusters", i)) for i, v in enumerate(value))
    timeout = _get(src, data, path, "timeout", _time(src), None)
    return Routing(
        prefer=_get(src, data, path, "prefer", _choice(src, ROUTING_PREFER), "earliest"),
        max_wait=_get(src, data, path, "max_wait", _time(src), None),
        clusters=clusters,
        timeout_s=timeout.total_seconds() if timeout else 15.0,
    )


def settings_from_env(s: Settings) -> Settings:
    env = os.environ
    ledger = env.get("SUANLI_LEDGER_URL") or s.ledger
    policy = env.get("SUANLI_ON_LEDGER_ERROR") or s.on_ledger_error
    if policy not in LEDGER_ERROR_POLICIES:
        raise ConfigError(f"SUANLI_ON_LEDGER_ERROR: {policy!r} is not allowed; use one of: deny, allow")
    poll = s.status_poll_max_s
    if env.get("SUANLI_STATUS_POLL_MAX_S"):
        try:
            poll = float(env["SUANLI_STATUS_POLL_MAX_S"])
        except ValueError:
            raise ConfigError(
                f"SUANLI_STATUS_POLL_MAX_S: {env['SUANLI_STATUS_POLL_MAX_S']!r} is not a number of seconds"
            ) from None
    default = env.get("SUANLI_CLUSTER") or s.default_cluster
    return Settings(ledger=ledger, on_ledger_error=policy, status_poll_max_s=poll, default_cluster=default,
                    routing=s.routing)
