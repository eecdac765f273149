"""`cbir serve`: refusals in-process, and a real server in a subprocess."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest

from cbir.cli import main
from tests.service.conftest import KEY, flipped, photo, serve_subprocess


def write_key(tmp_path: Path, key: str = KEY) -> Path:
    p = tmp_path / "key"
    p.write_text(key + "\n")
    p.chmod(0o600)
    return p


def test_serve_refuses_a_missing_index(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "nothing")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("cbir: error: ") and "no cbir index here" in err and "\n" not in err


@pytest.mark.parametrize(
    ("content", "message"), [(None, "cannot read"), ("", "at least 16"), ("short", "at least 16")]
)
def test_serve_refuses_a_bad_key_file(base_index, tmp_path, capsys, content, message):
    key = tmp_path / "key"
    if content is not None:
        key.write_text(content)
    assert main(["serve", str(base_index), "--api-key-file", str(key)]) == 1
    assert message in capsys.readouterr().err


def test_serve_refuses_a_port_in_use(base_index, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        assert main(["serve", str(base_index), "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err


def test_serve_answers_over_http_and_writes_need_the_key(index_copy, photos_dir, tmp_path):
    key = write_key(tmp_path)
    with (
        serve_subprocess(index_copy, "--api-key-file", str(key)) as url,
        httpx.Client(base_url=url, timeout=30) as c,
    ):
        assert url.startswith("http://127.0.0.1:")
        assert c.get("/health").json()["images"] == 13
        data = flipped(photo(photos_dir, "page"), "JPEG")
        assert c.post("/images", files={"file": ("p.jpg", data)}).status_code == 401
        r = c.post("/images", files={"file": ("p.jpg", data)}, headers={"X-API-Key": KEY})
        assert r.status_code == 201
        hits = c.post("/search", files={"file": ("q.jpg", data)}, data={"k": "1"}).json()["results"]
        assert hits[0]["id"] == r.json()["id"]
        assert "cbir_index_images 14" in c.get("/metrics").text


def test_served_connections_have_tcp_nodelay():
    """Without TCP_NODELAY, Nagle + delayed ACK add ~40 ms to a response sent in two writes."""
    import asyncio

    from cbir.cli.serve import bind

    async def accepted_nodelay() -> int:
        got: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        class Proto(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                s = transport.get_extra_info("socket")
                got.set_result(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        sock = bind("127.0.0.1", 0)
        server = await asyncio.get_running_loop().create_server(Proto, sock=sock)
        _, writer = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
        value = await asyncio.wait_for(got, 10)
        writer.close()
        server.close()
        return value

    assert asyncio.run(accepted_nodelay()) != 0
