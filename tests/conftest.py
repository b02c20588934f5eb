from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from harness.redis_cluster import RedisCluster
from harness.redis_server import running_redis


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis to test against: $REDIS_URL if set, else a private redis-server for this run.

    Tests share it, so each must use its own key prefix and never FLUSHDB.
    """
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    with running_redis() as url:
        yield url


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A private 3-master Redis Cluster (no replicas) for this run, formed once.

    Tests share it, so each must use its own key prefix, never FLUSHALL, and leave every slot
    served (a test that moves a slot finishes the move).
    """
    with RedisCluster(masters=3) as cluster:
        yield cluster
