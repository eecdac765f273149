"""What one ``cbir index`` run did: counts, failures, lost rows, and the lines it prints."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class IndexSummary:
    """What one ``cbir index`` run did."""

    images_dir: str
    index_dir: str
    found: int = 0
    indexed: int = 0
    reused: int = 0
    unchanged: int = 0
    touched: int = 0
    removed: int = 0
    moved: int = 0
    excluded: int = 0
    #: rows whose stored features were lost, embedded again from their files (same ids)
    repaired: int = 0
    #: rows whose features were lost and whose file is gone or unreadable: removed
    lost: list[dict[str, Any]] = field(default_factory=list)
    #: Folders indexed before that are gone (moved, deleted, not mounted): --prune keeps their rows.
    missing_roots: list[str] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    total: int = 0
    seconds: float = 0.0
    embedded_per_s: float = 0.0
    #: ``--refit-center``: the new fit (``{"images": n, "at": time}``)
    refit_center: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["n_failed"] = len(self.failed)
        return d

    def lines(self) -> list[str]:
        out = [
            f"indexed {self.indexed} new or changed image(s)"
            + (f" ({self.reused} reused from identical content)" if self.reused else "")
            + f", {self.unchanged} unchanged"
            + (f", {self.moved} moved (same id)" if self.moved else "")
            + (f", {self.excluded} excluded" if self.excluded else "")
            + (f", {self.repaired} repaired" if self.repaired else "")
            + f", {self.removed} removed"
            + (f", {len(self.lost)} lost" if self.lost else "")
            + f", {len(self.failed)} failed"
            f" -> {self.total} in {self.index_dir} ({self.seconds:.1f} s"
            + (f", {self.embedded_per_s:.0f} img/s" if self.embedded_per_s else "")
            + ")"
        ]
        if self.refit_center:
            out.append(
                f"centring mean refitted on {self.refit_center['images']} image(s);"
                " the search index was rebuilt"
            )
        for lost in self.lost[:50]:
            out.append(
                f"  lost: {lost['path']} (id {lost['id']}): its stored features were lost"
                f" ({lost['why']}) and {lost['file']}; its row was removed"
            )
        for f in self.failed[:50]:
            out.append(
                f"  failed: {f['path']}: {f['reason']}"
                + (f" ({f['detail']})" if f.get("detail") else "")
            )
        if len(self.failed) > 50:
            out.append(f"  ... and {len(self.failed) - 50} more (see --json)")
        for r in self.missing_roots:
            out.append(
                f"  kept the rows under {r}: the folder is gone (not mounted?);"
                f" `cbir prune {self.index_dir}` drops files gone anywhere"
            )
        return out
