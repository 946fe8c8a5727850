"""Fixtures of the serving tests: a small index over the tiny model, apps, a live local server."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
# An id with a slash, a colon and a space: it must survive URL encoding both ways.
ODD_ID = "news/2024:7 x"
HOSTILE_TEXT = "<img src=x onerror=\"document.title='pwned'\"> a fox in the snow"


@pytest.fixture(scope="session")
def serving_items(sample_items, image_files):
    """The shared seven items (tests/conftest.py), then an odd id and a hostile text."""
    from lamra.items import Item

    red = image_files[0]
    return [
        *sample_items,
        Item(text="The minister spoke at the conference about the election.", images=[red], id=ODD_ID),
        Item(text=HOSTILE_TEXT, id="txt-hostile"),
    ]


@pytest.fixture(scope="session")
def serving_index(serving_items, tiny_retriever, tmp_path_factory):
    from lamra.index import Index

    return Index.build(serving_items, tiny_retriever, tmp_path_factory.mktemp("serving-index") / "index",
                       show_progress=False)


class FakeReranker:
    """Scores candidates by a fixed rule, so fused scores and order can be checked exactly.

    P(Yes) = 1 for candidates that have no image, 0.1 for those that have one: reranking must
    lift text-only items above image items whatever the retrieval order was.
    """

    def __init__(self):
        self.calls = []

    def score(self, query_item, candidate_items):
        self.calls.append((query_item, list(candidate_items)))
        return np.array([0.1 if c.images else 1.0 for c in candidate_items], dtype=np.float32)


@pytest.fixture
def fake_reranker():
    return FakeReranker()


@pytest.fixture
def make_client(tiny_retriever, serving_index):
    """make_client(reranker=None, retriever=None, **limits) -> a started TestClient (lifespan run)."""
    from fastapi.testclient import TestClient

    from lamra.serving.app import create_app
    from lamra.serving.limits import ServeConfig

    clients = []

    def make(reranker=None, retriever=None, **limits):
        app = create_app(retriever or tiny_retriever, serving_index, reranker=reranker, config=ServeConfig(**limits))
        client = TestClient(app).__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@contextmanager
def live_server(app):
    """Serve ``app`` with uvicorn on 127.0.0.1 at a free port (chosen by the OS) in a thread."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


@pytest.fixture(scope="session")
def artifacts_dir():
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free now and not handed out before in this run: a probe's port is free again once
    the probe closes, so two servers started together could otherwise be given the same one."""
    import socket

    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


@contextmanager
def serve_process(*args, env=None, timeout_s=120.0):
    """``lamra serve ARGS --port P`` in a subprocess (its own interpreter, as deployed): yields its URL."""
    process, log, url = start_serve(*args, env=env)
    try:
        wait_until_up(process, log, url, timeout_s)
        log.seek(0)
        process.start_line = log.read().decode()
        yield url, process
    finally:
        stop_serve(process, log)


def start_serve(*args, env=None):
    """Start ``lamra serve ARGS --port P`` (a free port): (process, its log file, its URL)."""
    import os
    import subprocess
    import sys
    import tempfile

    port = free_port()
    code = "import sys; from lamra.cli import main; sys.exit(main(sys.argv[1:]))"
    log = tempfile.TemporaryFile()
    process = subprocess.Popen([sys.executable, "-c", code, "serve", *map(str, args), "--port", str(port)],
                               stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    return process, log, f"http://127.0.0.1:{port}"


def wait_until_up(process, log, url, timeout_s=120.0) -> None:
    """Until ``/health`` answers; the server's output in the error if it exits or never answers."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            log.seek(0)
            raise AssertionError(f"lamra serve exited with {process.returncode}:\n{log.read().decode()[-3000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"lamra serve did not answer on {url} within {timeout_s} s")
        time.sleep(0.1)


def stop_serve(process, log) -> None:
    import subprocess

    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)
    log.close()
