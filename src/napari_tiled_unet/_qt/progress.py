"""Times and estimates in the widgets' status lines (Qt-free, shared by both widgets)."""

from __future__ import annotations


def fmt_seconds(s: float | None) -> str:
    """``"4.2 s"``, ``"37 s"``, ``"2:05"``; ``"…"`` for an unknown time."""
    if s is None:
        return "…"
    if s < 9.95:  # "0 s" for a re-run of 0.4 s says nothing
        return f"{s:.1f} s"
    s = round(s)
    return f"{s // 60}:{s % 60:02d}" if s >= 60 else f"{s} s"


def eta(elapsed: float, fraction: float) -> float | None:
    """Seconds left from the share done, or None while that share is too small to tell."""
    if fraction <= 0.03 or elapsed < 2.0:
        return None
    return elapsed / fraction * (1 - fraction)


__all__ = ["eta", "fmt_seconds"]
