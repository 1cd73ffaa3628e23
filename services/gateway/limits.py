"""Request body limits, enforced before a body over the limit is read: a declared
`Content-Length` over it fails the first read, a streamed (chunked) body fails as soon as it
passes it. The 413 is raised inside the route, so it is an ordinary JSON error and metrics
still see the route."""

from collections.abc import Mapping

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(
            413, f"request body is too large: this endpoint accepts at most {limit:,} bytes"
        )


def declared_length(scope: Scope) -> int | None:
    value = Headers(scope=scope).get("content-length")
    return int(value) if value is not None and value.isdigit() else None


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, *, default: int, by_prefix: Mapping[str, int]) -> None:
        """`by_prefix`: path prefix → limit, for paths that need another one than `default`."""
        self.app = app
        self.default = default
        self.by_prefix = by_prefix

    def limit_for(self, path: str) -> int:
        matches = [limit for prefix, limit in self.by_prefix.items() if path.startswith(prefix)]
        return matches[0] if matches else self.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = declared_length(scope)
        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            if declared is not None and declared > limit:
                raise BodyTooLarge(limit)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, receive_within_limit, send)
