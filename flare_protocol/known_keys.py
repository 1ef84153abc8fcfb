"""Unknown keys in a config file, each named with the closest known key.

One phrasing for every place that reads user-written keys: a job's ``meta.json`` (refused),
the server's and a site's ``local/settings.json`` (warned about), e.g.
``'min_client' (did you mean 'min_clients'?)``.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Iterable

__all__ = ["closest_key", "unknown_keys"]


def closest_key(name: str, known: Iterable[str]) -> str | None:
    """The known key ``name`` was most likely meant to be, or None when none is close."""
    matches = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return matches[0] if matches else None


def unknown_keys(keys: Iterable[str], known: Collection[str]) -> list[str]:
    """One phrase per key of ``keys`` that is not in ``known``, in order.

    Each phrase quotes the key and, when one is close, the known key it resembles:
    ``'min_client' (did you mean 'min_clients'?)``.
    """
    phrases = []
    for key in keys:
        if key in known:
            continue
        guess = closest_key(key, known)
        phrases.append(f"{key!r}" + (f" (did you mean {guess!r}?)" if guess else ""))
    return phrases
