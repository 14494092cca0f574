"""Fixtures of the envtest tier: one real kube-apiserver + etcd for the whole test session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .apiserver import APIServer, TokenUser, find_tools

HERE = Path(__file__).parent

# Static token users, available as apiserver.users[name]: "envtest-user" has no groups and no
# RBAC, the simplest "someone else" (ServiceAccounts come from apiserver.service_account_token).
USERS = (TokenUser("envtest-user"),)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under tests/envtest, before the root conftest turns markers into skips."""
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.envtest)


@pytest.fixture(scope="session")
def apiserver() -> Iterator[APIServer]:
    """The running control plane: .kubeconfig, .url, .token, .env, .kubectl(...), .users.

    One per session because a start costs seconds; tests therefore use unique names and clean
    up what they create (there is no garbage collector, see apiserver.py).
    """
    tools, reason = find_tools()
    if tools is None:
        pytest.skip(reason)
    with APIServer(tools, users=USERS) as server:
        yield server
