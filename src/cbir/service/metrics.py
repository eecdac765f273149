"""Request counters and latency histograms in the Prometheus text format (``GET /metrics``)."""

from __future__ import annotations

import threading

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _label(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Request counters and latency histograms, written in the Prometheus text format."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = {}
        self.hist: dict[tuple[str, str], list[float]] = {}  # bucket counts..., sum, count

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one request of ``method`` on ``route`` answered with ``status``."""
        with self._lock:
            key = (method, route, status)
            self.requests[key] = self.requests.get(key, 0) + 1
            h = self.hist.setdefault((method, route), [0.0] * (len(LATENCY_BUCKETS) + 2))
            for i, b in enumerate(LATENCY_BUCKETS):
                if seconds <= b:
                    h[i] += 1
            h[-2] += seconds
            h[-1] += 1

    def render(self, gauges: dict[str, tuple[str, float]]) -> str:
        """The exposition text: counters, histograms, then ``gauges`` (name -> (help, value))."""
        out = [
            "# HELP cbir_requests_total HTTP requests served, by method, route and status.",
            "# TYPE cbir_requests_total counter",
        ]
        with self._lock:
            requests = sorted(self.requests.items())
            hist = sorted((k, list(v)) for k, v in self.hist.items())
        for (m, r, s), n in requests:
            out.append(
                f'cbir_requests_total{{method="{_label(m)}",route="{_label(r)}",status="{s}"}} {n}'
            )
        out += [
            "# HELP cbir_request_duration_seconds Time to serve a request, by method and route.",
            "# TYPE cbir_request_duration_seconds histogram",
        ]
        for (m, r), h in hist:
            lab = f'method="{_label(m)}",route="{_label(r)}"'
            for i, b in enumerate(LATENCY_BUCKETS):
                out.append(f'cbir_request_duration_seconds_bucket{{{lab},le="{b:g}"}} {int(h[i])}')
            out.append(f'cbir_request_duration_seconds_bucket{{{lab},le="+Inf"}} {int(h[-1])}')
            out.append(f"cbir_request_duration_seconds_sum{{{lab}}} {h[-2]:.6f}")
            out.append(f"cbir_request_duration_seconds_count{{{lab}}} {int(h[-1])}")
        for name, (help_, value) in gauges.items():
            out += [f"# HELP {name} {help_}", f"# TYPE {name} gauge", f"{name} {value:g}"]
        return "\n".join(out) + "\n"
