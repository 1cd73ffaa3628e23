"""How answers look in a terminal."""

from rich.console import Console
from rich.markup import escape

from shared.contracts import Answer, AnswerInvalidated


def print_answer(console: Console, question: str, answer: Answer) -> None:
    console.print(f"[bold]Q:[/] {question}")
    if answer.supersedes is not None:
        console.print(f"[dim](a new answer: it replaces answer {answer.supersedes})[/]")
    if answer.possibly_stale:
        console.print(
            "[yellow]possibly stale:[/] the index had not reached the requested doc versions "
            "in time"
        )
    if answer.error:
        console.print(f"[red]error:[/] {answer.error}")
    style = "yellow" if answer.abstained else "green"
    console.print(f"[bold {style}]A:[/] {answer.text}")
    for citation in answer.citations:
        console.print(
            f"  [{citation.marker}] {citation.title or citation.doc_id} "
            f"([dim]{citation.doc_id} v{citation.version}[/]) — “{citation.quote}”"
        )
    timings = answer.timings
    parts = [
        f"{name} {value:.0f} ms"
        for name, value in (
            ("retrieve", timings.retrieve_ms),
            ("rerank", timings.rerank_ms),
            ("generate", timings.generate_ms),
            ("total", timings.total_ms),
        )
        if value is not None
    ]
    meta = [f"model {answer.model}"] if answer.model else []
    if answer.reranker:
        meta.append(f"reranker {answer.reranker}")
    if answer.rerank_degraded:
        meta.append(f"rerank degraded: {answer.rerank_degraded}")
    console.print(f"  [dim]{' · '.join(parts + meta)}[/]")


def print_invalidation(console: Console, event: AnswerInvalidated) -> None:
    change = f"deleted at v{event.new_version}" if event.deleted else f"now v{event.new_version}"
    console.print(
        f"[yellow]![/] answer invalidated: [bold]{escape(event.doc_id)}[/] changed "
        f"(cited v{event.old_version}, {change})",
        highlight=False,
    )
