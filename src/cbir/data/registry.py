"""The dataset layouts cbir reads, by name, and where it looks for each.

Each reader module defines ``LAYOUT = Layout(...)``; :data:`LAYOUT_MODULES` lists them.
``open_dataset(name_or_path)`` takes a registered name (looked up under the layout's
default roots and ``$CBIR_DATA/<name>``) or the path of a directory in a known layout.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cbir.data.base import Dataset
from cbir.errors import CbirError

#: Reader modules, in the order `cbir datasets` lists them.
LAYOUT_MODULES = [
    "cbir.data.folder",
    "cbir.data.idx",
    "cbir.data.cifar",
    "cbir.data.cub",
    "cbir.data.cars",
    "cbir.data.sop",
    "cbir.data.dogs",
    "cbir.data.inshop",
    "cbir.data.nuswide",
]


@dataclass
class Layout:
    """A dataset layout.

    Args:
        name: the layout's name ("imagefolder", "fashion-mnist", "cifar10", ...).
        description: one line: what it is and which splits it returns.
        load: ``load(root) -> Dataset``; raises CbirError naming the missing file.
        default_roots: directories searched when the user gives only the name.
        detect: ``detect(root) -> bool``, True when ``root`` is in this layout.
        aliases: other names accepted for it (e.g. "mnist" for the idx reader).
    """

    name: str
    description: str
    load: Callable[[Path], Dataset]
    default_roots: list[str] = field(default_factory=list)
    detect: Callable[[Path], bool] | None = None
    aliases: list[str] = field(default_factory=list)

    def roots(self) -> list[Path]:
        """Candidate roots: ``$CBIR_DATA/<name>`` first, then the default roots."""
        out = []
        data = os.environ.get("CBIR_DATA")
        if data:
            out += [Path(data) / n for n in [self.name, *self.aliases]]
        out += [Path(os.path.expanduser(r)) for r in self.default_roots]
        return out


def layouts() -> list[Layout]:
    """All registered layouts (a module's own layouts may be a list ``LAYOUTS``)."""
    out: list[Layout] = []
    for mod_name in LAYOUT_MODULES:
        mod = importlib.import_module(mod_name)
        out += list(getattr(mod, "LAYOUTS", [])) or [mod.LAYOUT]
    return out


def get_layout(name: str) -> Layout:
    """The layout registered under ``name`` (or an alias)."""
    for lay in layouts():
        if name == lay.name or name in lay.aliases:
            return lay
    names = ", ".join(lay.name for lay in layouts())
    raise CbirError(f"unknown dataset {name!r}; known: {names} (or give a directory path)")


def open_dataset(name_or_path: str) -> Dataset:
    """Open a dataset by registered name or by directory path.

    A path is read with the first layout whose ``detect`` accepts it (ImageFolder last).
    """
    p = Path(os.path.expanduser(name_or_path))
    if p.exists():
        if not p.is_dir():
            raise CbirError(f"{p}: a dataset must be a directory")
        for lay in sorted(layouts(), key=lambda lay: lay.name == "imagefolder"):
            if lay.detect is not None and lay.detect(p):
                return lay.load(p)
        raise CbirError(
            f"{p}: unknown dataset layout; expected one of the layouts listed by `cbir datasets`"
            " (e.g. an ImageFolder: one sub-folder of images per class)"
        )
    lay = get_layout(name_or_path)
    tried = lay.roots()
    for root in tried:
        if root.exists():
            return lay.load(root)
    where = ", ".join(str(r) for r in tried) or "(no default location)"
    raise CbirError(
        f"dataset {lay.name!r} not found; looked in: {where}. "
        f"Put it there, set CBIR_DATA, or pass its directory path"
    )
