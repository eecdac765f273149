"""Retrieval pooling of a backbone's last feature map ``(n, c, h, w)`` into ``(n, c)`` rows.

- ``avg``: global average pooling, what the ImageNet classifier was trained on (the default;
  the backbone's ``features`` output, computed inside the ONNX graph).
- ``gem``: generalised mean, ``(mean x^p)^(1/p)`` per channel (Radenovic, Tolias & Chum,
  "Fine-tuning CNN Image Retrieval with No Human Annotation", TPAMI 2018; ``p = 3``).
- ``rmac``: regional maximum activations (Tolias, Sicre & Jegou, "Particular object retrieval
  with integral max-pooling of CNN activations", ICLR 2016): max pooling over square regions
  at ``L = 3`` scales, each region vector L2-normalised, summed. The paper's PCA-whitening is
  learned on the indexed collection by the index's transform
  (:class:`cbir.heads.frozen.FrozenTransform` with ``whiten``, :func:`learn_whitening`); it
  is applied to the summed vector, as Gordo et al. (IJCV 2017) and Radenovic et al. do,
  rather than to each region (which would need every region vector of the collection).
- multi-scale inference: the image at scales 1, 1/sqrt(2) and 1/2, each pooled and
  L2-normalised, then averaged (Radenovic et al.'s multi-scale descriptor with exponent 1).
- flip (``--flip``): test-time horizontal-flip augmentation, the averaging over an image and
  its horizontal reflection of Krizhevsky, Sutskever & Hinton ("ImageNet Classification with
  Deep Convolutional Neural Networks", NIPS 2012) applied to descriptors: the preprocessed
  image and its mirror each pooled (at each scale) and L2-normalised, all rows averaged. The
  descriptor of an image and of its mirror are then the same (mirror invariance), for twice
  the network work.
- power normalisation (``--power P``): the final descriptor raised element-wise to the power
  P, sign kept, and L2-normalised again (Perronnin, Sanchez & Mensink, "Improving the Fisher
  Kernel for Large-Scale Image Classification", ECCV 2010; P = 0.5 is the signed square root
  that Jegou et al. apply to aggregated descriptors): it damps the few dimensions that a
  repeated structure makes large ("burstiness"), so more of the descriptor takes part in the
  cosine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cbir.errors import CbirError

POOLINGS = ("avg", "gem", "rmac")
DEFAULT = "avg"
#: GeM's exponent (Radenovic et al.: p = 3 for the off-the-shelf network).
GEM_P = 3.0
#: R-MAC's number of region scales (Tolias et al.: L = 3).
RMAC_LEVELS = 3
#: The multi-scale option's image scales (Radenovic et al.).
MULTI_SCALES = (1.0, 1.0 / math.sqrt(2.0), 0.5)
EPS = 1e-6


def check_pooling(name: str) -> str:
    """``name`` if it is a known pooling, else a one-line error."""
    if name not in POOLINGS:
        raise CbirError(f"unknown --pooling {name!r}; choose one of {', '.join(POOLINGS)}")
    return name


def parse_scales(text: str | Sequence[float] | None) -> tuple[float, ...]:
    """``"1,0.707,0.5"`` (or ``"multi"``, or a sequence) as a tuple of scales; ``(1.0,)`` for
    None."""
    if text is None:
        return (1.0,)
    if isinstance(text, str):
        try:
            vals = (
                MULTI_SCALES
                if text.strip() == "multi"
                else tuple(float(v) for v in text.split(",") if v.strip())
            )
        except ValueError:
            raise CbirError(
                f"--scales {text!r}: give scales such as 1,0.7071,0.5 (or multi)"
            ) from None
    else:
        vals = tuple(float(v) for v in text)
    vals = tuple(round(v, 4) for v in vals)
    if not vals or any(not (0.1 <= v <= 1.0) for v in vals) or vals[0] != 1.0:
        raise CbirError(
            f"--scales {text!r}: the first scale is 1 and each is in [0.1, 1] (e.g. multi)"
        )
    return vals


def power_normalise(x: np.ndarray, power: float) -> np.ndarray:
    """Rows of ``x`` as ``sign(x) |x|^power``, L2-normalised (Perronnin et al., ECCV 2010)."""
    x = np.asarray(x, np.float32)
    return l2n(np.sign(x) * np.abs(x) ** np.float32(power))


def parse_power(value: float | str | None) -> float:
    """The ``--power`` exponent (default 1: no power normalisation), in (0, 1]."""
    if value is None:
        return 1.0
    try:
        p = float(value)
    except ValueError:
        p = float("nan")
    if not 0.0 < p <= 1.0:
        raise CbirError(f"--power must be a number in (0, 1], such as 0.5; not {value!r}")
    return p


def mirrored(batch: np.ndarray) -> np.ndarray:
    """A preprocessed NHWC batch mirrored left to right."""
    return np.ascontiguousarray(np.asarray(batch)[:, :, ::-1])


def scaled_size(size: int, scale: float) -> int:
    """The (even) input side of ``size`` at ``scale``."""
    return max(32, 2 * int(round(size * scale / 2)))


def l2n(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """``x`` with unit L2 rows along ``axis`` (zero rows stay zero)."""
    return x / (np.linalg.norm(x, axis=axis, keepdims=True) + EPS)


def avg(fmap: np.ndarray) -> np.ndarray:
    """Global average pooling ``(n, c, h, w) -> (n, c)``."""
    return np.asarray(fmap, np.float32).mean(axis=(2, 3))


def gem(fmap: np.ndarray, p: float = GEM_P) -> np.ndarray:
    """Generalised-mean pooling ``(mean_hw max(x, eps)^p)^(1/p)`` (Radenovic et al. 2018)."""
    x = np.maximum(np.asarray(fmap, np.float64), EPS)
    return (np.mean(x**p, axis=(2, 3)) ** (1.0 / p)).astype(np.float32)


def rmac_regions(h: int, w: int, levels: int = RMAC_LEVELS) -> list[tuple[int, int, int]]:
    """R-MAC's square regions ``(top, left, side)`` on an ``h x w`` map (Tolias et al. 2016):
    at level ``l`` the side is ``2 min(h, w) / (l + 1)``, with ``l`` (plus up to ``m``)
    regions per dimension spaced evenly, the extra ``m`` on the long side chosen for about
    40% overlap (the layout of the authors' and Radenovic et al.'s code)."""
    side = min(h, w)
    extra_w = extra_h = 0
    if h != w:
        steps = np.arange(2, 8)
        b = (max(h, w) - side) / (steps - 1)
        idx = int(np.argmin(np.abs((side**2 - side * b) / side**2 - 0.4)))
        if h < w:
            extra_w = idx + 1
        else:
            extra_h = idx + 1
    out: list[tuple[int, int, int]] = []
    for lev in range(1, levels + 1):
        wl = int(math.floor(2 * side / (lev + 1)))
        if wl == 0:
            continue
        for top in _starts(lev + extra_h, h, wl):
            for left in _starts(lev + extra_w, w, wl):
                out.append((top, left, wl))
    return out


def _starts(count: int, dim: int, side: int) -> list[int]:
    """``count`` region starts of width ``side`` spread evenly over ``dim``."""
    half = math.floor(side / 2 - 1)
    step = 0.0 if count == 1 else (dim - side) / (count - 1)
    return [int(math.floor(half + i * step) - half) for i in range(count)]


def rmac(fmap: np.ndarray, levels: int = RMAC_LEVELS) -> np.ndarray:
    """R-MAC before whitening: the sum of the L2-normalised max-pooled region vectors."""
    x = np.asarray(fmap, np.float32)
    n, c, h, w = x.shape
    out = np.zeros((n, c), np.float32)
    for top, left, s in rmac_regions(h, w, levels):
        out += l2n(x[:, :, top : top + s, left : left + s].max(axis=(2, 3)))
    return out


def pool(fmap: np.ndarray, pooling: str) -> np.ndarray:
    """``fmap`` pooled by the method named ``pooling``."""
    if pooling == "gem":
        return gem(fmap)
    if pooling == "rmac":
        return rmac(fmap)
    if pooling == "avg":
        return avg(fmap)
    raise CbirError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")


def combine_scales(vectors: Sequence[np.ndarray]) -> np.ndarray:
    """One row per image from its per-scale rows: the mean of the L2-normalised rows (a
    single scale is returned unchanged)."""
    if len(vectors) == 1:
        return vectors[0]
    return np.mean([l2n(np.asarray(v, np.float32)) for v in vectors], axis=0).astype(np.float32)


def resize_batch(batch: np.ndarray, side: int) -> np.ndarray:
    """A uint8 NHWC batch resized to ``side x side`` (Pillow, antialiased)."""
    from PIL import Image

    if batch.shape[1] == side:
        return batch
    return np.stack(
        [np.asarray(Image.fromarray(im).resize((side, side), Image.BILINEAR)) for im in batch]
    )


def learn_whitening(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PCA-whitening ``(mean, P)`` learned on ``features`` (rows): ``(x - mean) @ P`` has
    identity covariance. The covariance is shrunk by Ledoit & Wolf's estimator
    (scikit-learn), so a collection smaller than the dimension still gives a full-rank,
    bounded whitening (a tiny one is close to the identity, i.e. hardly whitened)."""
    from sklearn.covariance import LedoitWolf

    x = np.asarray(features, np.float64)
    mean = x.mean(0)
    if len(x) < 2:
        return mean.astype(np.float32), np.eye(x.shape[1], dtype=np.float32)
    cov = LedoitWolf(assume_centered=False).fit(x).covariance_
    vals, vecs = np.linalg.eigh(cov)
    vals = np.maximum(vals, vals.max() * 1e-9)
    return mean.astype(np.float32), (vecs / np.sqrt(vals)).astype(np.float32)


def options(
    backbone_name: str,
    pooling: str | None,
    scales: str | None,
    flip: bool | None = None,
    power: float | str | None = None,
) -> dict[str, object]:
    """The backbone options of ``--pooling`` / ``--scales`` / ``--flip`` / ``--power`` for a
    new index (refused for a backbone other than ``efficientnet-lite0``, which has no
    feature-map export). ``--no-flip`` and ``--power 1`` record nothing: the defaults."""
    pw = parse_power(power)
    if pooling is None and scales is None and not flip and pw == 1.0:
        return {}
    if backbone_name != "efficientnet-lite0":
        raise CbirError(
            f"--pooling, --scales, --flip and --power need the efficientnet-lite0 backbone,"
            f" not {backbone_name}; leave them out or leave out --backbone"
        )
    return {
        "pooling": None if pooling is None else check_pooling(pooling),
        "scales": None if scales is None else parse_scales(scales),
        "flip": True if flip else None,
        "power": None if pw == 1.0 else pw,
    }


@dataclass(frozen=True)
class Choice:
    """The retrieval pooling asked of ``cbir index`` (None: not given): ``--pooling``,
    ``--scales``, ``--flip``, ``--power``, ``--whiten``. A new index records it; an
    existing one refuses another (:func:`check_recorded`, :func:`check_whiten`)."""

    pooling: str | None = None
    scales: str | None = None
    flip: bool | None = None
    power: float | str | None = None
    whiten: bool | None = None

    def options(self, backbone_name: str) -> dict[str, object]:
        """The backbone options of a new index (:func:`options`)."""
        return options(backbone_name, self.pooling, self.scales, self.flip, self.power)

    def check(self, root: object, fp: dict, transform_spec: dict) -> None:
        """Refuse what the index at ``root`` was not built with."""
        check_recorded(root, fp, self.pooling, self.scales, self.flip, self.power)
        check_whiten(root, transform_spec, self.whiten)


def check_recorded(
    root: object,
    fp: dict,
    pooling: str | None,
    scales: str | None,
    flip: bool | None = None,
    power: float | str | None = None,
) -> None:
    """Refuse ``--pooling`` / ``--scales`` / ``--flip`` / ``--power`` other than those the
    index at ``root`` (backbone fingerprint ``fp``) was built with: one index never mixes
    poolings."""
    have = fp.get("pooling", DEFAULT)
    have_scales = tuple(fp.get("scales") or (1.0,))
    if pooling is not None and check_pooling(pooling) != have:
        raise CbirError(
            f"{root} was built with --pooling {have}, not {pooling}; leave --pooling out to"
            " update it, or index into another --index directory"
        )
    if scales is not None and parse_scales(scales) != have_scales:
        built = ",".join(str(s) for s in have_scales)
        raise CbirError(
            f"{root} was built with --scales {built}, not {scales}; leave --scales out to"
            " update it, or index into another --index directory"
        )
    have_flip = bool(fp.get("flip"))
    if flip is not None and bool(flip) != have_flip:
        built, asked = ("--flip", "--no-flip") if have_flip else ("--no-flip", "--flip")
        raise CbirError(
            f"{root} was built with {built} (flip averaging {'on' if have_flip else 'off'}),"
            f" not {asked}; leave the option out to update it, or index into another --index"
            " directory"
        )
    have_power = float(fp.get("power", 1.0))
    if power is not None and parse_power(power) != have_power:
        raise CbirError(
            f"{root} was built with --power {have_power:g}, not --power {power}; leave --power"
            " out to update it, or index into another --index directory"
        )


def whitens(fp: dict, whiten: bool | None = None) -> bool:
    """Whether a new index of backbone fingerprint ``fp`` PCA-whitens: ``whiten`` (from
    ``--whiten`` / ``--no-whiten``), else as its pooling's paper does (R-MAC does)."""
    return fp.get("pooling") == "rmac" if whiten is None else bool(whiten)


def check_whiten(root: object, transform_spec: dict, whiten: bool | None) -> None:
    """Refuse ``--whiten`` / ``--no-whiten`` other than what the index at ``root`` records."""
    have = bool(transform_spec.get("whiten"))
    if whiten is not None and bool(whiten) != have:
        built = "--whiten" if have else "--no-whiten"
        raise CbirError(
            f"{root} was built with {built}; leave the option out to update it, or index into"
            " another --index directory"
        )
