"""Small formatting filters for the web pages."""

from __future__ import annotations

from django import template

register = template.Library()


@register.filter
def duration(seconds: float | None) -> str:
    """``3725`` -> ``"1 h 2 min"``, ``42.3`` -> ``"42 s"``; an unknown time is ``"—"``."""
    if seconds is None:
        return "—"
    total = max(0, round(float(seconds)))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s" if minutes < 10 else f"{minutes} min"
    return f"{secs} s"


@register.filter
def per_second(rate: float | None) -> str:
    """Images per second for the jobs page; ``"—"`` while no rate is known."""
    if rate is None:
        return "—"
    return f"{rate:.2f}/s" if rate < 10 else f"{rate:.0f}/s"
