"""The generator's exclusive work (`shared.delivery.Exclusive`): one Answer per query.

- key: the query id. One generator at a time works on a query; a sibling that gets a
  duplicate entry of it meanwhile leaves that entry pending.
- request: the query event's id. A duplicate of a query event (a reclaim after a generator
  froze, a retried upstream commit, a dead letter replayed within `ttl_s`) is not answered
  again; a regenerated query (`regenerate`: a new event, same query id) is.
- streamed: the `AnswerDelta`s of a query. Only the generator that streamed first for the
  request streams, so the client reads one sequence (seq 0, 1, ...). If a reclaimer answers
  after the first generator froze mid-stream, the deltas stop where the frozen one stopped
  and the final Answer (authoritative, as always) is the reclaimer's.
"""

from pydantic import BaseModel

from shared.contracts import AnswerDelta, Reranked
from shared.delivery import Exclusive

ANSWERED_TTL_S = 3600.0
"""How long a query event is remembered as answered (duplicates arrive within minutes)."""


def _streamed_query(event: BaseModel) -> str | None:
    return event.query_id if isinstance(event, AnswerDelta) else None


ONE_ANSWER_PER_QUERY: Exclusive[Reranked] = Exclusive(
    key=lambda reranked: reranked.query.query_id,
    request=lambda reranked: str(reranked.query.event_id),
    streamed_key=_streamed_query,
    ttl_s=ANSWERED_TTL_S,
)
