"""Errors a user can act on: each says which file, what is wrong and what to do."""

from __future__ import annotations


class CbirError(Exception):
    """An error with a message meant for the user (printed as one line by the CLI)."""


class ImageError(CbirError):
    """An input file that cannot be used as an image.

    Args:
        path: the file, as the user named it.
        reason: short, stable reason code ("not-an-image", "truncated", "bomb", ...).
        detail: human-readable detail.
    """

    def __init__(self, path: str, reason: str, detail: str = "") -> None:
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"{self.path}: {reason}" + (f" ({detail})" if detail else ""))


class IndexMismatchError(CbirError):
    """The index was built with another model than the one asked for."""


class IndexWriteError(CbirError):
    """The index cannot be written (read-only folder, permissions, full disk, file size limit).

    Raised before or instead of a commit: the last committed state is intact.
    """


class IndexDamagedError(CbirError):
    """The index's database holds what cbir never writes (flipped bytes, a row missing a
    field): say which file, and that ``cbir check`` and a backup or a re-index are the way on.
    """

    def __init__(self, db: object, what: str) -> None:
        root = getattr(db, "parent", "INDEX")  # a Path: its folder is the index
        super().__init__(
            f"{db}: the index database is damaged ({what}); run `cbir check {root}`, then"
            " restore the index from a backup or re-index the images into a new --index folder"
        )
