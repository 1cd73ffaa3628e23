"""`ragstream ingest DIR --sync` and `ragstream watch DIR`: mirror a folder into the index.

A small JSON state file remembers, per doc id (a file's path relative to the folder), the last
version the index acknowledged and the content hash it had (None: deleted). A sync sends nothing
for a file whose hash is unchanged, an upsert at a new version (the clock in ms, strictly above
the stored one) for a new or changed file, and a delete for a file that is gone. The state is
written only after the index has acknowledged the events, so an interrupted sync is retried.
"""

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from redis.asyncio import Redis

from ragstream.ingest import ConnectionHook, IngestReport, Published, clock_ms, publish_and_wait
from ragstream.sources import TEXT_SUFFIXES, SourceDoc, doc_id_of, read_file, text_files
from shared.contracts import DocDelete, DocUpsert
from shared.settings import StreamSettings

SETTLED = ("indexed", "deleted")
"""Outcomes that make the index match the folder: recorded in the state."""


def default_state_path(data_dir: Path, folder: Path) -> Path:
    """`<data dir>/sync/<hash of the folder's absolute path>.json`."""
    key = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
    return data_dir / "sync" / f"{key}.json"


@dataclass(frozen=True)
class Entry:
    version: int
    content_hash: str | None
    """None: deleted at `version`."""


@dataclass
class SyncState:
    """doc id → the last acknowledged version and content hash, kept in a JSON file."""

    path: Path
    entries: dict[str, Entry] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> "SyncState":
        if not path.exists():
            return cls(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            entries = {
                doc_id: Entry(int(e["version"]), e["content_hash"])
                for doc_id, e in raw["docs"].items()
            }
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{path}: not a sync state file ({exc})") from None
        return cls(path, entries)

    def save(self) -> None:
        """Written to a temporary file, then renamed over the old one (never half written)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        docs = {
            doc_id: {"version": e.version, "content_hash": e.content_hash}
            for doc_id, e in sorted(self.entries.items())
        }
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps({"docs": docs}, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)

    def live(self) -> set[str]:
        return {doc_id for doc_id, e in self.entries.items() if e.content_hash is not None}

    def record(
        self, events: Sequence[DocUpsert | DocDelete], outcomes: Mapping[tuple[str, int], str]
    ) -> int:
        """Remember the events the index settled (indexed or deleted); how many."""
        recorded = 0
        for event in events:
            if outcomes.get((event.doc_id, event.version)) in SETTLED:
                digest = event.content_hash if isinstance(event, DocUpsert) else None
                self.entries[event.doc_id] = Entry(event.version, digest)
                recorded += 1
        return recorded


@dataclass(frozen=True)
class Scan:
    """What a folder holds now, within `scope` (None: the whole folder)."""

    docs: dict[str, SourceDoc]
    scope: set[str] | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    """doc id → why it was left as it is (empty, unreadable): neither sent nor deleted."""


def scan(folder: Path, changed: Iterable[Path] | None = None, known: Iterable[str] = ()) -> Scan:
    """The whole folder, or only the doc ids `changed` paths touch: a file, or a folder (a
    renamed or deleted folder touches every `known` doc under it)."""
    if changed is None:
        return _read(folder, [doc_id_of(f, folder) for f in text_files(folder)], None)
    root = folder.resolve()
    known = list(known)
    scope: set[str] = set()
    for path in changed:
        try:
            rel = Path(path).resolve().relative_to(root).as_posix()
        except ValueError:
            continue
        if Path(rel).suffix in TEXT_SUFFIXES:
            scope.add(rel)
        scope.update(d for d in known if d.startswith(f"{rel}/") or rel == ".")
        if (root / rel).is_dir():
            scope.update(doc_id_of(f, root) for f in text_files(root / rel))
    present = [d for d in sorted(scope) if (root / d).is_file()]
    return _read(root, present, scope)


def _read(root: Path, doc_ids: Sequence[str], scope: set[str] | None) -> Scan:
    docs: dict[str, SourceDoc] = {}
    skipped: dict[str, str] = {}
    for doc_id in doc_ids:
        try:
            doc = read_file(root / doc_id, root)
        except FileNotFoundError:
            continue  # gone since it was listed: vanished
        except (OSError, UnicodeDecodeError) as exc:
            skipped[doc_id] = f"unreadable ({exc})"
            continue
        if not doc.text.strip():
            skipped[doc_id] = "empty"
        else:
            docs[doc_id] = doc
    return Scan(docs, scope, skipped)


@dataclass(frozen=True)
class Plan:
    events: list[DocUpsert | DocDelete]
    unchanged: int


def plan(state: SyncState, found: Scan, now_ms: int) -> Plan:
    """The events that make the index match `found`: versions strictly above the stored ones."""

    def version(doc_id: str) -> int:
        stored = state.entries.get(doc_id)
        return now_ms if stored is None else max(now_ms, stored.version + 1)

    events: list[DocUpsert | DocDelete] = []
    unchanged = 0
    for doc_id, doc in sorted(found.docs.items()):
        stored = state.entries.get(doc_id)
        if stored is not None and stored.content_hash == doc.content_hash:
            unchanged += 1
        else:
            events.append(doc.event(version(doc_id)))
    candidates = state.live() if found.scope is None else state.live() & found.scope
    for doc_id in sorted(candidates - found.docs.keys() - found.skipped.keys()):
        events.append(DocDelete(doc_id=doc_id, version=version(doc_id)))
    return Plan(events, unchanged)


@dataclass(frozen=True)
class SyncResult:
    plan: Plan
    report: IngestReport
    skipped: dict[str, str]

    @property
    def settled(self) -> bool:
        return len(self.report.outcomes) == len(self.plan.events)

    def summary(self) -> dict[str, object]:
        upserts = sum(isinstance(e, DocUpsert) for e in self.plan.events)
        return {
            **self.report.summary(),
            "upserted": upserts,
            "deleted": len(self.plan.events) - upserts,
            "unchanged": self.plan.unchanged,
            "skipped": len(self.skipped),
        }


async def sync(
    redis: Redis,
    folder: Path,
    state: SyncState,
    *,
    changed: Iterable[Path] | None = None,
    streams: StreamSettings | None = None,
    timeout_s: float = 600.0,
    clock: Callable[[], int] = clock_ms,
    on_progress: Callable[[int], None] | None = None,
    on_connection: ConnectionHook | None = None,
    on_published: Callable[[Sequence[Published]], None] | None = None,
) -> SyncResult:
    """Scan (all of `folder`, or what `changed` touches), publish what differs from `state`,
    wait for the acks, then record and save what the index settled."""
    found = scan(folder, changed, state.entries)
    todo = plan(state, found, clock())
    if not todo.events:
        return SyncResult(todo, IngestReport(docs=0), found.skipped)
    report = await publish_and_wait(
        redis, todo.events, streams=streams or StreamSettings(), timeout_s=timeout_s,
        on_progress=on_progress, on_connection=on_connection, on_published=on_published,
    )  # fmt: skip
    if state.record(todo.events, report.outcomes):
        state.save()
    return SyncResult(todo, report, found.skipped)


__all__ = [
    "Entry",
    "Plan",
    "Scan",
    "SyncResult",
    "SyncState",
    "default_state_path",
    "plan",
    "scan",
    "sync",
]
