"""Trial outcomes and the table ``python -m cbir_testing.reliability`` prints."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Outcome:
    """One trial: whether it failed (and why), and committed images it lost."""

    failed: bool = False
    lost: int = 0
    detail: str = ""
    note: str = ""

    def fail(self, why: str) -> Outcome:
        """Mark failed, keeping the first few reasons."""
        self.failed = True
        self.detail = (self.detail + "; " if self.detail else "") + why[:300]
        return self


@dataclass
class Tally:
    """All trials of one fault."""

    fault: str
    trials: int = 0
    failures: int = 0
    lost: int = 0
    details: list[str] = field(default_factory=list)
    notes: dict[str, int] = field(default_factory=dict)
    skipped: str = ""
    #: False where losing committed data is not what is measured (inputs, searches).
    measures_loss: bool = True

    def add(self, o: Outcome) -> None:
        self.trials += 1
        self.lost += o.lost
        if o.failed:
            self.failures += 1
            if len(self.details) < 10:
                self.details.append(o.detail)
        if o.note:
            self.notes[o.note] = self.notes.get(o.note, 0) + 1

    @property
    def ok(self) -> bool:
        return self.failures == 0 and self.lost == 0


def table(tallies: list[Tally]) -> str:
    """A Markdown table: fault, trials, failures, data lost (plus notes)."""
    lines = [
        "| fault | trials | failures | data lost |",
        "|---|---:|---:|---:|",
    ]
    for t in tallies:
        if t.skipped:
            lines.append(f"| {t.fault} | not run: {t.skipped} | | |")
        else:
            lost = t.lost if t.measures_loss else "n/a"
            lines.append(f"| {t.fault} | {t.trials} | {t.failures} | {lost} |")
    return "\n".join(lines)


def notes(tallies: list[Tally]) -> list[str]:
    """Per-fault notes and the first failure details."""
    out = []
    for t in tallies:
        if t.notes:
            parts = ", ".join(f"{k}: {v}" for k, v in sorted(t.notes.items()))
            out.append(f"{t.fault}: {parts}")
        for d in t.details[:3]:
            out.append(f"{t.fault}: FAILED: {d}")
    return out
