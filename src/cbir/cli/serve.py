"""``cbir serve``: the search API and web page over one index, on uvicorn."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import stat
import sys
from pathlib import Path
from typing import Any

from cbir.cli.common import AddCommand, add_index_argument
from cbir.errors import CbirError


def read_api_key(path: str) -> str:
    """The API key in ``path``: its first line, without a UTF-8 byte order mark (as some
    editors write) and surrounding white space; CbirError if missing, short or not ASCII
    (an HTTP header carries ASCII: another key could never be sent)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or (
            "not UTF-8 text" if isinstance(e, UnicodeDecodeError) else e
        )
        raise CbirError(f"{path}: cannot read the API key file ({reason})") from None
    key = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not (key.isascii() and key.isprintable()):
        raise CbirError(
            f"{path}: the API key must be printable ASCII (an HTTP header cannot carry"
            f" other characters); e.g. `openssl rand -hex 24 > {path}`"
        )
    if len(key) < 16:
        raise CbirError(
            f"{path}: the API key must be at least 16 characters (e.g. `openssl rand -hex 24 > {path}`)"
        )
    if p.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        print(
            f"cbir: warning: {path} is readable by other users; `chmod 600 {path}`", file=sys.stderr
        )
    return key


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free port); CbirError if it fails."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, addr = infos[0]
        # proto IPPROTO_TCP (not 0) so that asyncio sets TCP_NODELAY on each connection
        sock = socket.socket(family, kind, proto or socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(128)
    except OSError as e:
        raise CbirError(
            f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port"
        ) from None
    sock.set_inheritable(True)
    return sock


#: How ``cbir serve --workers N`` hands its settings to the worker processes it spawns.
WORKER_ENV = "CBIR_SERVE_WORKER"


def _app_from(settings: dict[str, Any]) -> Any:
    from cbir.service.app import create_app
    from cbir.service.guard import AllowedHosts

    key = read_api_key(settings["api_key_file"]) if settings["api_key_file"] else None
    app = create_app(
        settings["index_dir"],
        api_key=key,
        max_upload_bytes=settings["max_upload_bytes"],
        store=settings["store"],
        embed_threads=settings["embed_threads"],
        allowed_hosts=AllowedHosts.for_bind(settings["host"], settings["allow_hosts"]),
        max_query_bytes=settings["max_query_bytes"],
        sketch_model=settings.get("sketch_model"),
    )
    _ = app.state.service.backbone  # load the model now, not on the first upload
    return app


def worker_app() -> Any:
    """The app of one ``cbir serve --workers N`` process (uvicorn calls this factory)."""
    app = _app_from(json.loads(os.environ[WORKER_ENV]))
    print(f"cbir: worker {os.getpid()} ready", flush=True)
    return app


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the index until interrupted."""
    import uvicorn

    if args.max_upload_mb <= 0:
        raise CbirError("--max-upload-mb must be positive")
    if args.workers < 1:
        raise CbirError("--workers must be at least 1")
    if args.embed_threads is not None and args.embed_threads < 1:
        raise CbirError("--embed-threads must be at least 1")
    if args.max_query_mb < 0:
        raise CbirError("--max-query-mb must be 0 or more")
    from cbir.service.guard import valid_host

    for name in args.allow_host:
        if not valid_host(name):
            raise CbirError(f"--allow-host {name!r}: give a host name or address, without a port")
    settings = {
        "index_dir": os.path.abspath(args.index_dir),
        "api_key_file": os.path.abspath(args.api_key_file) if args.api_key_file else None,
        "max_upload_bytes": int(args.max_upload_mb * 1024 * 1024),
        "store": args.store,
        "embed_threads": args.embed_threads,
        "host": args.host,
        "allow_hosts": list(args.allow_host),
        "max_query_bytes": int(args.max_query_mb * 1024 * 1024),
        "sketch_model": os.path.abspath(args.sketch_model) if args.sketch_model else None,
    }
    # one app here even with workers: a bad index, key or store fails now, in one line
    app = _app_from(settings)
    svc = app.state.service
    count = svc.store.count()
    sock = bind(args.host, args.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(
        f"cbir: serving {settings['index_dir']} ({count} images) on http://{shown}:{port}/"
        + (f" from {args.store}" if args.store else "")
        + (f" with {args.workers} worker processes" if args.workers > 1 else "")
        + ("" if settings["api_key_file"] else " (read-only: no --api-key-file)"),
        flush=True,
    )
    if not _is_loopback(args.host):
        print(
            f"cbir: warning: listening on {args.host}, not loopback: anyone who can reach it can search",
            file=sys.stderr,
            flush=True,
        )
    log = {"log_level": args.log_level, "access_log": args.log_level == "debug"}
    try:
        if args.workers == 1:
            config = uvicorn.Config(app, lifespan="on", **log)
            uvicorn.Server(config).run(sockets=[sock])
        else:
            from uvicorn.supervisors import Multiprocess

            svc.close()  # each worker opens the index itself
            os.environ[WORKER_ENV] = json.dumps(settings)
            config = uvicorn.Config(
                "cbir.cli.serve:worker_app",
                factory=True,
                workers=args.workers,
                lifespan="on",
                **log,
            )
            Multiprocess(config, sockets=[sock]).run()
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after a graceful shutdown
        pass
    print("cbir: server stopped", flush=True)
    return 0


def register(add: AddCommand) -> None:
    """Add ``cbir serve``."""
    sp = add(
        "serve",
        cmd_serve,
        "Serve an index over HTTP: search API, web page at /, metrics (loopback by default).",
    )
    add_index_argument(sp)
    sp.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sp.add_argument(
        "--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)"
    )
    sp.add_argument(
        "--api-key-file",
        default=None,
        metavar="FILE",
        help="file holding the key that writes need: adding, deleting, feedback (without it, read-only)",
    )
    sp.add_argument(
        "--max-upload-mb", type=float, default=20.0, help="largest image upload (default 20 MB)"
    )
    sp.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests whose Host header names NAME (repeatable; by default only"
        " the --host address, and localhost for a loopback one: against DNS rebinding)",
    )
    sp.add_argument(
        "--max-query-mb",
        type=float,
        default=512.0,
        help="most MB of uploaded query images kept under INDEX/queries/ for training when"
        " feedback names them (default 512; then feedback is refused, 507)",
    )
    sp.add_argument(
        "--sketch-model",
        default=None,
        metavar="RUN_DIR",
        help="a `cbir train --method sketch` run: the web page gets a drawing canvas and"
        " POST /search/sketch searches by a drawing",
    )
    sp.add_argument(
        "--log-level",
        default="warning",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn's log level (debug also logs every request)",
    )
    sp.add_argument(
        "--store",
        default=None,
        metavar="milvus:URI|shards:DIR",
        help="answer searches from this Milvus collection or these shard files, as"
        " `cbir search --store` does (adds and deletes keep it in step)",
    )
    sp.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="server processes sharing the port, each with its own copy of the"
        " search index (default 1; /metrics counts the process that answers)",
    )
    sp.add_argument(
        "--embed-threads",
        type=int,
        default=None,
        metavar="N",
        help="onnxruntime threads per uploaded query (default: all cores; 1 gives"
        " the most uploads per second when several arrive at once)",
    )
