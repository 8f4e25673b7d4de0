"""`suanli serve`: the web portal (jobs, usage, quotas, Prometheus /metrics) over the same registry and ledger as
the CLI. A top layer like ``suanli.cli``: it uses ``suanli.api.Client`` and the ledger's read functions, and
nothing in suanli imports it (so the web framework never loads on the CLI's start-up path)."""
