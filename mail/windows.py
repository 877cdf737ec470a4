"""How a date window is written in each provider's search: IMAP SEARCH dates, Gmail's after:/before:."""

from __future__ import annotations

from datetime import date, datetime, timezone

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def imap_date(day: date) -> str:
    """RFC 3501 date (`1-Feb-2024`): English month names, whatever the locale."""
    return f"{day.day}-{_MONTHS[day.month - 1]}-{day.year}"


def gmail_epoch(day: date) -> int:
    """Midnight UTC of `day` in epoch seconds: Gmail's after:/before: take epoch seconds."""
    return int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp())


def gmail_since(day: date) -> str:
    """Gmail query for messages on or after `day` (after: is exclusive)."""
    return f"after:{gmail_epoch(day) - 1}"
