"""`python -m bench.reliability`: run every fault scenario at full size; print one JSON line."""

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from bench.reliability.cluster import Cluster
from bench.reliability.scenarios import Sizes, run_all


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.reliability", description=__doc__)
    parser.add_argument("--docs", type=int, default=1_000, help="docs per fault scenario")
    parser.add_argument("--burst", type=int, default=10_000, help="docs in the burst")
    parser.add_argument("--updates", type=int, default=200, help="events for the one updated doc")
    parser.add_argument("--outage-s", type=float, default=10.0, help="store outage length")
    parser.add_argument("--replicas", type=int, default=2, help="processes per stage")
    parser.add_argument("--only", action="append", default=[], help="run only these scenarios")
    parser.add_argument("--store", choices=("lancedb", "weaviate"), default="lancedb",
                        help="the index (weaviate: a local server; store_outage becomes "
                        "weaviate_restart)")  # fmt: skip
    parser.add_argument("--keep", type=Path, default=None, help="work dir to keep (logs, index)")
    args = parser.parse_args()
    sizes = Sizes(docs=args.docs, burst=args.burst, updates=args.updates, outage_s=args.outage_s)
    with tempfile.TemporaryDirectory(prefix="ragstream-reliability-") as tmp:
        cluster = Cluster(args.keep or Path(tmp), replicas=args.replicas, backend=args.store)
        started = time.perf_counter()
        try:
            cluster.start()
            scenarios = asyncio.run(run_all(cluster, sizes, args.only))
        finally:
            cluster.stop()
    result = {
        "sizes": sizes.__dict__,
        "replicas": args.replicas,
        "store": args.store,
        "scenarios": scenarios,
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
