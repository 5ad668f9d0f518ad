"""pytest fixtures for tests against a real local chain. A test module loads them with

    pytest_plugins = ["tests.chain.fixtures"]

which registers them once, so every such module shares one ganache. (Importing the fixtures by name
into a module works too, but then each importing module starts its own "session" ganache.)

`chain` is one ganache for the session: a test that stops instamine or reverts a snapshot puts things
back before it ends (Chain.one_block() does); `token` is a fresh TestUSDT per module. Without
`npm ci` (no node_modules/ganache) these tests skip on a developer's machine and fail in CI."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.chain.ganache import GANACHE_CLI, Chain, Token, deploy_token


@pytest.fixture(scope="session")
def node_tools() -> None:
    """Skips the test when node_modules/ganache is missing, except in CI, where that is a failure."""
    if GANACHE_CLI.is_file():
        return
    message = "node_modules/ganache is missing: run `npm ci --no-audit --no-fund`"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def chain(node_tools: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    with Chain(log_path=tmp_path_factory.mktemp("ganache") / "ganache.log") as running:
        yield running


@pytest.fixture(scope="module")
def token(chain: Chain) -> Token:
    return deploy_token(chain)
