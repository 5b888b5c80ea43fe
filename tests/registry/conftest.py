"""Registry fixtures: real registries on 127.0.0.1, a bearer-token server, test images, fake registries.

The machinery lives in ``tests/reg_helpers.py``; these are thin wrappers. Session-scoped servers start
once; ``registry`` and ``registry_htpasswd`` are in tests/conftest.py, shared with other directories.

* ``registry`` — Debian's ``docker-registry`` (distribution v2) on a free 127.0.0.1 port, filesystem
  storage in a temporary directory, deletes enabled. A ``RegistryServer``: ``.host``
  (``127.0.0.1:<port>``), ``.ref(repo, tag)``, ``.log()`` / ``.access_lines()`` (to check whether a blob
  was uploaded or mounted).
* ``registry_htpasswd`` — the same with HTTP basic auth (``htpasswd -Bbn``); ``.username``,
  ``.password``, ``.creds`` (``user:password`` for skopeo).
* ``registry_token`` — the same with bearer-token auth: a token server in this process issues RS256
  JWTs signed by ``openssl dgst`` with a self-signed certificate the registry trusts;
  ``.token_server.requests`` lists what it was asked for.
* ``image_layout`` — OCI layouts built by umoci from a busybox rootfs (see ``build_image_layouts``).
* ``test_images`` — those images pushed to ``registry`` by skopeo: ``"v2s2"``, ``"oci"``, ``"zstd"``
  (OCI, zstd layers) and ``"index"`` (linux/amd64 + linux/arm64); each a ``PushedImage`` with ``.ref``,
  ``.by_digest``, ``.digest`` and ``.raw`` (the manifest bytes as the registry serves them).
* ``fake_registry`` — a factory of small scripted HTTP registries for faults; see ``FakeRegistry``.
* ``registry_env`` (autouse) — ``BERTH_AUTH_FILE``, ``DOCKER_CONFIG``, ``XDG_CONFIG_HOME`` and
  ``BERTH_REGISTRIES_CONF`` point into the test's tmp dir, so the host's credentials never leak in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reg_helpers import (
    FakeRegistry,
    PushedImage,
    RegistryServer,
    build_image_layouts,
    isolate_registry_env,
    push_test_images,
    start_token_registry,
)


@pytest.fixture(scope="session")
def registry_token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    server = start_token_registry(tmp_path_factory.mktemp("registry-token"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def image_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_image_layouts(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="session")
def test_images(registry: RegistryServer, image_layout: Path) -> dict[str, PushedImage]:
    return push_test_images(registry, image_layout)


@pytest.fixture(autouse=True)
def registry_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return isolate_registry_env(tmp_path / "registry-env", monkeypatch)


@pytest.fixture
def fake_registry() -> Iterator[Callable[[], FakeRegistry]]:
    servers: list[FakeRegistry] = []

    def make() -> FakeRegistry:
        server = FakeRegistry()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()
