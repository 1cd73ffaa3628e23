"""Reliability under faults: real stage processes, a real AOF-backed server, injected failures.

    python -m bench.reliability [--docs N] [--burst N] [--updates N] [--outage-s S] [--only NAME]

`tests/faults/` runs the same scenarios at CI size.
"""
