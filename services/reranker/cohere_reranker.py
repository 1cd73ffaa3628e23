"""Cohere's v2 rerank API (or a compatible gateway) as a `Reranker`."""

import asyncio
import math
from collections.abc import Sequence
from typing import Any

import httpx
from cohere import AsyncClientV2
from cohere.core.api_error import ApiError

from services.reranker.reranking import RerankError, one_line

RETRYABLE_STATUS = frozenset({408, 429})
MAX_BODY_CHARS = 160


def _body_message(body: Any) -> str:
    """The human part of an error body: its `message` field, else the body's text."""
    if isinstance(body, dict):
        body = body.get("message") or body.get("error") or body
    return one_line(str(body), MAX_BODY_CHARS) if body not in (None, "", {}) else ""


def _failure(exc: Exception, timeout_s: float) -> tuple[str, bool] | None:
    """(reason, transient) for errors the client raises; None for anything unexpected."""
    if isinstance(exc, ApiError):
        status = exc.status_code
        message = _body_message(exc.body)
        if status is None:
            return message or "client error", False
        if 200 <= status < 300:  # the body did not parse
            return f"malformed response ({message or 'empty body'})", False
        reason = f"HTTP {status}" + (f" ({message})" if message else "")
        return reason, status >= 500 or status in RETRYABLE_STATUS
    if isinstance(exc, httpx.TimeoutException):
        return f"no response within {timeout_s:g} s ({type(exc).__name__})", True
    if isinstance(exc, httpx.TransportError):
        detail = str(exc) or type(exc).__name__
        return f"connection error ({detail})", True
    return None


def _malformed(detail: str) -> RerankError:
    return RerankError(f"cohere rerank failed: malformed response ({detail})", transient=False)


def scores_by_index(results: Any, count: int) -> list[float]:
    """One score per document from the API's results (best first, each naming its `index`)."""
    if not isinstance(results, list):
        raise _malformed("no results list")
    scores: list[float | None] = [None] * count
    for result in results:
        index = getattr(result, "index", None)
        score = getattr(result, "relevance_score", None)
        if type(index) is not int or not 0 <= index < count or scores[index] is not None:
            raise _malformed(f"result index {index!r} is invalid or repeated")
        if (
            isinstance(score, bool)
            or not isinstance(score, int | float)
            or not math.isfinite(score)
        ):
            raise _malformed(f"relevance_score {score!r} of result {index} is not a number")
        scores[index] = float(score)
    complete = [s for s in scores if s is not None]
    if len(complete) != count:
        raise _malformed(f"{len(complete)} of {count} documents scored")
    return complete


class CohereReranker:
    """`POST <base>/v2/rerank` with every passage; scores are mapped back by result index.

    Retries connection errors, timeouts, 408, 429 and 5xx `max_retries` times with exponential
    backoff (`retry_backoff_s`, doubled each time); other 4xx fail at once. The SDK's own
    retries are off, so one budget (the caller's) bounds every attempt.
    """

    def __init__(
        self,
        *,
        model: str,
        api_key: str,
        base_url: str | None = None,
        timeout_s: float = 2.0,
        max_retries: int = 2,
        retry_backoff_s: float = 0.05,
    ) -> None:
        self.name = f"cohere:{model}"
        self.model = model
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.retry_backoff_s = retry_backoff_s
        self._http = httpx.AsyncClient(timeout=timeout_s)
        self._client = AsyncClientV2(
            api_key=api_key,
            base_url=base_url,
            timeout=timeout_s,
            max_retries=0,
            httpx_client=self._http,
        )

    async def _request(self, query: str, passages: Sequence[str]) -> list[float]:
        response = await self._client.rerank(
            model=self.model, query=query, documents=list(passages), top_n=len(passages)
        )
        return scores_by_index(getattr(response, "results", None), len(passages))

    async def score(self, query: str, passages: Sequence[str]) -> list[float]:
        if not passages:
            return []
        attempt = 1
        while True:
            try:
                return await self._request(query, passages)
            except (ApiError, httpx.HTTPError) as exc:
                failure = _failure(exc, self.timeout_s)
                if failure is None:
                    raise
                reason, transient = failure
                if not transient or attempt > self.max_retries:
                    tries = f" after {attempt} attempts" if attempt > 1 else ""
                    raise RerankError(
                        f"cohere rerank failed: {reason}{tries}", transient=transient
                    ) from exc
            await asyncio.sleep(self.retry_backoff_s * 2 ** (attempt - 1))
            attempt += 1

    async def aclose(self) -> None:
        await self._http.aclose()
