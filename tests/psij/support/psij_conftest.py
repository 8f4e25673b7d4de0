"""conftest.py for PSI/J's own tests (copied next to them by tests/psij/run_suite.sh).

PSI/J's conftest (not in its sdist) also uploads results to testing.psij.io and needs git, requests and filelock;
this one keeps only what the executor tests use: ``--executors`` (``executor[:launcher[:url]]``, comma separated),
``--queue-name``, ``--account`` and ``--custom-attributes``, parametrizing ``execparams`` exactly as PSI/J's does.
Two additions for CI: a per-test time limit (PSI/J's tests wait without a timeout on batch executors, so a lost
job would hang the run), and ``PSIJ_SUITE_BATCH_POLL_S``, the queue polling interval of PSI/J's own batch
executors (default 30 s: the reference run would take half an hour).
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from types import FrameType
from typing import Any

import pytest
from executor_test_params import ExecutorTestParams  # type: ignore

TEST_LIMIT_S = int(os.environ.get("PSIJ_SUITE_TEST_LIMIT_S", "90"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--executors", action="store", default="local:single",
                     help="executor[:launcher[:url]] entries, comma separated")
    parser.addoption("--queue-name", action="store", default=None)
    parser.addoption("--multi-node-queue-name", action="store", default=None)
    parser.addoption("--account", action="store", default=None)
    parser.addoption("--custom-attributes", action="store", default=None,
                     help='JSON items {"filter": REGEX, "value": {KEY: VALUE}}, comma separated')


def pytest_configure(config: pytest.Config) -> None:
    poll = os.environ.get("PSIJ_SUITE_BATCH_POLL_S")
    if poll:
        from psij.executors.batch.batch_scheduler_executor import BatchSchedulerExecutorConfig

        original = BatchSchedulerExecutorConfig.__init__

        def patched(self: Any, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("queue_polling_interval", float(poll))
            kwargs.setdefault("initial_queue_polling_delay", min(float(poll), 2.0))
            original(self, *args, **kwargs)

        BatchSchedulerExecutorConfig.__init__ = patched  # type: ignore[method-assign]


def _custom_attributes(text: str | None) -> dict[str, dict[str, object]] | None:
    if not text:
        return None
    out: dict[str, dict[str, object]] = {}
    for item in json.loads("[" + text + "]"):
        out.setdefault(item["filter"], {}).update(item["value"])
    return out


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "execparams" not in metafunc.fixturenames:
        return
    opt = metafunc.config.option
    custom = _custom_attributes(opt.custom_attributes)
    params = [ExecutorTestParams(e.strip(), queue_name=opt.queue_name, multi_node_queue_name=opt.multi_node_queue_name,
                                 account=opt.account, custom_attributes_raw=custom)
              for e in opt.executors.split(",") if e.strip()]
    metafunc.parametrize("execparams", params, ids=str)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """PSI/J's per-test custom attributes: every filter (a regex) that matches the test's name."""
    params = getattr(item, "callspec", None)
    ep = params.params.get("execparams") if params is not None else None
    if ep is not None and ep.custom_attributes_raw:
        import re

        for pattern, attrs in ep.custom_attributes_raw.items():
            if re.match(pattern, item.name):
                ep.custom_attributes.update(attrs)


def _expired(signum: int, frame: FrameType | None) -> None:
    raise TimeoutError(f"test ran past PSIJ_SUITE_TEST_LIMIT_S={TEST_LIMIT_S} s")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    previous = signal.signal(signal.SIGALRM, _expired)
    signal.alarm(TEST_LIMIT_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
