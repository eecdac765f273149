"""What every transform is: backbone features in, index vectors or codes out."""

from __future__ import annotations

import hashlib
import io
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from cbir.codes.base import l2_normalize
from cbir.errors import CbirError
from cbir.utils import atomic_write_bytes

__all__ = [
    "Transform",
    "apply_weighting",
    "collection_mean",
    "l2_normalize",
    "read_fitted_array",
    "spectral_weighting",
    "write_fitted_array",
]


def collection_mean(features: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """The mean of a collection's features (float32, summed in float64) and the record of
    the fit kept in an index's spec: ``{"images": n, "at": "YYYY-mm-ddTHH:MM:SSZ"}``."""
    mean = np.asarray(features, dtype=np.float64).mean(0).astype(np.float32)
    fitted = {
        "images": int(len(features)),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return mean, fitted


def spectral_weighting(u: np.ndarray, power: float, keep: int | None = None) -> np.ndarray:
    """The collection's spectral weighting ``(dim + 1, dim)`` of the rows ``u``: their
    mean, then ``V diag(lambda / lambda_max) ** power``, with ``V, lambda`` the principal
    axes and variances of the centred rows, so that ``(u - mean) @ map`` scales each
    principal coordinate by ``lambda ** power``. ``keep``: only the top ``keep`` axes, in
    decreasing variance: the rows reduced to the collection's principal subspace (PCA,
    Pearson 1901; ``power = 0`` is that projection alone); below ``dim`` the first row of
    the ``(dim + 1, keep)`` result is then the projected mean ``mean @ map``.

    ``power = -0.5`` is PCA-whitening (Jegou & Chum, ECCV 2012); a positive power does the
    opposite and stresses the collection's dominant directions. At ``power = 0.5`` the
    cosine of two mapped rows is that of ``u_a C u_b`` with ``C`` the collection's
    covariance: ``sum_i (u_a . u_i)(u_b . u_i)``, a second-order similarity (two images are
    close when they are close to the same images of the collection), the one-step linear
    case of diffusion on the collection (Iscen et al., "Efficient Diffusion on Region
    Manifolds", CVPR 2017). Fitted on unlabelled rows only.
    """
    x = np.asarray(u, dtype=np.float64)
    mean = x.mean(0)
    xc = x - mean
    vals, vecs = np.linalg.eigh(xc.T @ xc / max(len(xc) - 1, 1))
    vals = np.maximum(vals, 0.0) / max(float(vals.max()), 1e-30)
    scale = vals.clip(1e-12) ** power if power < 0 else vals**power
    mapping = vecs * scale[None]
    if keep is not None and keep < len(mean):  # eigh sorts ascending: the last are the top
        mapping = np.ascontiguousarray(mapping[:, ::-1][:, : int(keep)])
        mean = mean @ mapping
    return np.concatenate([mean[None], mapping]).astype(np.float32)


def apply_weighting(u: np.ndarray, weighting: np.ndarray) -> np.ndarray:
    """Rows ``u`` mapped by a :func:`spectral_weighting` (its mean row, then the matrix;
    a reducing map's first row is the projected mean)."""
    if weighting.shape[1] < weighting.shape[0] - 1:
        return u @ weighting[1:] - weighting[0]
    return (u - weighting[0]) @ weighting[1:]


def write_fitted_array(root: Path, prefix: str, array: np.ndarray) -> dict[str, str]:
    """Write an array fitted on a collection into the index directory ``root`` as
    ``<prefix>-<digest>.npy``; the record kept in the transform's spec."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()[:12]
    name = f"{prefix}-{digest}.npy"
    atomic_write_bytes(Path(root) / name, data)
    return {"file": name, "sha256": digest}


def read_fitted_array(root: Path | None, record: dict[str, Any], what: str) -> np.ndarray:
    """Read back what :func:`write_fitted_array` wrote (``what``: its name in errors)."""
    path = Path(root or ".") / record["file"]
    try:
        data = path.read_bytes()
    except OSError:
        raise CbirError(
            f"{path}: the index's {what} file is missing; rebuild it with"
            " `cbir index FOLDER --index INDEX --refit-center`"
        ) from None
    if hashlib.sha256(data).hexdigest()[:12] != record["sha256"]:
        raise CbirError(
            f"{path}: the {what} file is damaged; rebuild it with"
            " `cbir index FOLDER --index INDEX --refit-center`"
        )
    return np.load(io.BytesIO(data), allow_pickle=False)


class Transform(Protocol):
    """Maps ``(n, feature_dim)`` float32 features to index vectors."""

    #: "float" (float32 rows, inner-product search) or "binary" (packed uint8 codes).
    kind: str
    #: Output dimension (bits for binary codes).
    dim: int

    def __call__(self, features: np.ndarray) -> np.ndarray: ...

    def float_view(self, features: np.ndarray) -> np.ndarray:
        """Float vectors used for re-ranking (cosine on these)."""
        ...

    def spec(self) -> dict[str, Any]:
        """A JSON-serialisable description, enough to rebuild the transform."""
        ...

    def fit(self, features: np.ndarray) -> None:
        """Fit collection statistics (e.g. the mean), if any."""
        ...
