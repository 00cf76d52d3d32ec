"""Property-based requests against every route of the OpenAPI document: never a 500."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import RunningServer, start_server

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=10,
)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, dict[str, str]]]:
    workdir: Path = tmp_path_factory.mktemp("api-properties")
    server = start_server(workdir, "--api-rate", "1000")
    keys = {}
    for name, extra in (("app", []), ("admin", ["--admin"])):
        keys[name] = subprocess.run(
            [
                sys.executable,
                "-m",
                "iceward",
                "keys",
                "add",
                name,
                *extra,
                "--data-dir",
                str(server.data_dir),
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
    try:
        yield server, keys
    finally:
        server.stop()


#: Operations left out: draining ends the server once it is empty (tests/test_drain.py).
ENDS_THE_SERVER = {("POST", "/admin/v1/drain")}


def operations(server: RunningServer) -> list[tuple[str, str]]:
    with urllib.request.urlopen(server.http_url + "/openapi.json", timeout=10) as response:
        spec = json.load(response)
    every = [(method.upper(), path) for path, item in spec["paths"].items() for method in item]
    return [operation for operation in every if operation not in ENDS_THE_SERVER]


def call(
    server: RunningServer, method: str, path: str, body: Any, query: dict[str, str], key: str | None
) -> int:
    url = server.http_url + path + ("?" + urllib.parse.urlencode(query) if query else "")
    data = json.dumps(body).encode() if method in ("POST", "PUT", "PATCH") else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if key is not None:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_no_route_answers_500(
    api: tuple[RunningServer, dict[str, str]], data: st.DataObject
) -> None:
    server, keys = api
    method, template = data.draw(st.sampled_from(operations(server)), label="operation")
    segment = st.one_of(st.text(min_size=1, max_size=12), st.integers(-5, 10**12).map(str))
    path = template
    while "{" in path:
        start, end = path.index("{"), path.index("}")
        path = path[:start] + urllib.parse.quote(data.draw(segment), safe="") + path[end + 1 :]
    query = data.draw(
        st.dictionaries(
            st.sampled_from(["service", "username", "key", "ttl", "limit", "x"]),
            st.text(max_size=12) | st.sampled_from(["turn", keys["app"], "60", "-1", "1e9"]),
            max_size=4,
        ),
        label="query",
    )
    body = data.draw(
        JSON
        | st.fixed_dictionaries(
            {"user": st.text(max_size=300)},
            optional={
                "ttl": st.integers(-10, 10**9),
                "transports": st.lists(st.text(max_size=5)),
                "region": st.text(max_size=80),
                "name": st.text(max_size=20),
                "password": st.text(max_size=20),
                "value": st.text(max_size=40),
            },
        ),
        label="body",
    )
    key = data.draw(st.sampled_from([None, keys["app"], keys["admin"], "iwk_bogus"]), label="key")
    status = call(server, method, path, body, query, key)
    assert status < 500, (method, path, query, body)
