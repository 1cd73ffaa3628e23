"""Faults with Weaviate as the index, at CI size: two replicas of the chunker and the embedder
as real processes, a real AOF-backed Redis and a real Weaviate, killed and restarted.
`python -m bench.reliability --store weaviate` runs these at full size."""

from collections.abc import Iterator

import pytest

from bench.reliability import scenarios
from bench.reliability.cluster import Cluster
from bench.reliability.observe import Expectation
from tests.faults.test_scenarios import exactly_once

pytestmark = [pytest.mark.integration, pytest.mark.slow]
DOCS = 120


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path_factory.mktemp("weaviate-faults"), replicas=2, backend="weaviate")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def expectation() -> Expectation:
    return Expectation()


async def test_shuffled_updates_converge_across_replicas(
    cluster: Cluster, expectation: Expectation
) -> None:
    result = await scenarios.shuffled_updates(cluster, expectation, 100)
    exactly_once(result, 1)
    assert result["dead_lettered"] == 0


async def test_kill_9_embedder_mid_update_loses_nothing(
    cluster: Cluster, expectation: Expectation
) -> None:
    result = await scenarios.kill_midbatch(cluster, expectation, "embedder", DOCS)
    exactly_once(result, DOCS)
    assert result["pending_at_kill"] > 0 and result["dead_lettered"] == 0


async def test_weaviate_restart_mid_ingest_is_retried(
    cluster: Cluster, expectation: Expectation
) -> None:
    result = await scenarios.weaviate_restart(cluster, expectation, DOCS)
    exactly_once(result, DOCS)
    assert result["dead_lettered"] == 0
    assert result["stages_alive"]
