"""The shell's one rich :class:`~rich.theme.Theme`: style names that say what they mean.

Renderers use only these names (``[status.running]``, ``[error]``), never raw colours,
so the look changes in one place and output without a terminal carries no codes.
"""

from __future__ import annotations

from rich.theme import Theme

__all__ = ["THEME", "status_style"]

THEME = Theme(
    {
        "status.submitted": "cyan",
        "status.dispatched": "cyan",
        "status.running": "bold blue",
        "status.completed": "bold green",
        "status.aborted": "yellow",
        "status.failed": "bold red",
        "status.unknown": "default",
        "error": "bold red",
        "warning": "yellow",
        "ok": "green",
        "muted": "dim",
        "id": "magenta",
        "site": "cyan",
        "key": "bold",
        "metric": "green",
        "prompt": "bold",
        "toolbar.ok": "green",
        "toolbar.down": "bold red",
    }
)

_STATUS_STYLE = {
    "SUBMITTED": "status.submitted",
    "DISPATCHED": "status.dispatched",
    "RUNNING": "status.running",
    "FINISHED:COMPLETED": "status.completed",
    "FINISHED:ABORTED": "status.aborted",
}


def status_style(status: str) -> str:
    """The theme style for a job status (any other ``FINISHED:*`` counts as failed)."""
    text = str(getattr(status, "value", status))
    style = _STATUS_STYLE.get(text)
    if style is not None:
        return style
    return "status.failed" if text.startswith("FINISHED") else "status.unknown"
