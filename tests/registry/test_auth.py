"""Authentication against real registries: htpasswd basic auth and a bearer-token server."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from berth.content import ContentStore
from berth.errors import PermissionDenied
from berth.registry import ANONYMOUS, Credentials, RegistryClient, login, logout, lookup
from berth.registry.pull import pull
from berth.registry.push import push
from reg_helpers import PushedImage, RegistryServer, push_image, skopeo_raw

pytestmark = pytest.mark.integration

@pytest.fixture(scope="session")
def basic_image(registry_htpasswd: RegistryServer, image_layout: Path) -> PushedImage:
    return push_image(f"oci:{image_layout / 'layout'}:base", registry_htpasswd.ref("private/app"),
                      creds=registry_htpasswd.creds)


@pytest.fixture(scope="session")
def token_image(registry_token: RegistryServer, image_layout: Path) -> PushedImage:
    return push_image(f"oci:{image_layout / 'layout'}:base", registry_token.ref("tok/app"),
                      creds=registry_token.creds)


@pytest.fixture
def store(tmp_path: Path) -> ContentStore:
    return ContentStore(tmp_path / "content")


# --- basic ------------------------------------------------------------------------------------------


def test_basic_good_credentials(registry_htpasswd: RegistryServer, basic_image: PushedImage,
                                store: ContentStore) -> None:
    client = RegistryClient(registry_htpasswd.host,
                            credentials=Credentials(registry_htpasswd.username, registry_htpasswd.password))
    client.ping()
    result = pull(basic_image.ref, store, client=client)
    assert str(result.digest) == basic_image.digest
    pushed = push(registry_htpasswd.ref("private/copy"), store, result.digest, client=client)
    assert set(pushed.blobs.values()) == {"mounted"}
    assert skopeo_raw(registry_htpasswd.ref("private/copy"), registry_htpasswd.creds) == basic_image.raw


def test_basic_bad_and_missing_credentials(registry_htpasswd: RegistryServer, basic_image: PushedImage,
                                           store: ContentStore) -> None:
    bad = RegistryClient(registry_htpasswd.host, credentials=Credentials(registry_htpasswd.username, "wrong"))
    with pytest.raises(PermissionDenied, match=r"authentication failed as berth: wrong user name or password"):
        pull(basic_image.ref, store, client=bad)
    with pytest.raises(PermissionDenied, match="wrong user name or password"):
        bad.ping()
    with pytest.raises(PermissionDenied, match=rf"requires authentication: log in with berth login "
                                               rf"{registry_htpasswd.host}"):
        pull(basic_image.ref, store, client=RegistryClient(registry_htpasswd.host, credentials=ANONYMOUS))
    assert list(store.walk()) == []


def test_login_file_then_logout(registry_htpasswd: RegistryServer, basic_image: PushedImage, store: ContentStore,
                                registry_env: Path) -> None:
    path = login(registry_htpasswd.host, registry_htpasswd.username, registry_htpasswd.password)
    assert path == registry_env / "berth-auth.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert lookup(registry_htpasswd.host) == Credentials(registry_htpasswd.username, registry_htpasswd.password)
    result = pull(basic_image.ref, store)  # credentials found by the client itself
    assert str(result.digest) == basic_image.digest
    assert logout(registry_htpasswd.host)
    assert not logout(registry_htpasswd.host)
    with pytest.raises(PermissionDenied, match="requires authentication"):
        RegistryClient(registry_htpasswd.host).ping()


def test_docker_config_and_credential_helper(registry_htpasswd: RegistryServer, basic_image: PushedImage,
                                             store: ContentStore, registry_env: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    docker = registry_env / "docker"
    docker.mkdir()
    encoded = base64.b64encode(registry_htpasswd.creds.encode()).decode()
    (docker / "config.json").write_text(json.dumps({"auths": {f"http://{registry_htpasswd.host}/v1/":
                                                              {"auth": encoded}}}))
    assert pull(basic_image.ref, store).digest

    # A credential helper wins over auths; it is asked with the server address on stdin.
    bindir = registry_env / "bin"
    bindir.mkdir()
    asked = registry_env / "helper-asked"
    helper = bindir / "docker-credential-berthtest"
    helper.write_text(
        "#!/bin/sh\n"
        f"cat > {asked}\n"
        f"printf '%s' '{{\"ServerURL\":\"x\",\"Username\":\"{registry_htpasswd.username}\","
        f"\"Secret\":\"{registry_htpasswd.password}\"}}'\n"
    )
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    (docker / "config.json").write_text(json.dumps({
        "auths": {registry_htpasswd.host: {"auth": base64.b64encode(b"berth:wrong").decode()}},
        "credHelpers": {registry_htpasswd.host: "berthtest"},
    }))
    client = RegistryClient(registry_htpasswd.host)
    client.ping()
    assert asked.read_text() == registry_htpasswd.host


# --- bearer token -----------------------------------------------------------------------------------


def test_bearer_token_flow(registry_token: RegistryServer, token_image: PushedImage, store: ContentStore) -> None:
    ts = registry_token.token_server
    assert ts is not None
    ts.requests.clear()
    client = RegistryClient(registry_token.host,
                            credentials=Credentials(registry_token.username, registry_token.password))
    result = pull(token_image.ref, store, client=client)
    assert str(result.digest) == token_image.digest
    pulls = [r for r in ts.requests if r["scopes"] == ["repository:tok/app:pull"]]
    assert len(pulls) == 1, f"one token for the whole pull, cached per scope: {ts.requests}"
    assert pulls[0]["user"] == registry_token.username and pulls[0]["service"] == [ts.service]

    # A second pull with the same client reuses the cached token.
    pull(token_image.ref, ContentStore(store.root.parent / "second"), client=client)
    assert len([r for r in ts.requests if r["scopes"] == ["repository:tok/app:pull"]]) == 1

    # Pushing asks for pull,push on the target and pull on the mount source, in one token.
    ts.requests.clear()
    pushed = push(registry_token.ref("tok/copy"), store, result.digest, client=client)
    assert set(pushed.blobs.values()) == {"mounted"}
    scopes = [set(r["scopes"]) for r in ts.requests]
    assert {"repository:tok/copy:pull,push", "repository:tok/app:pull"} in scopes
    assert skopeo_raw(registry_token.ref("tok/copy"), registry_token.creds) == token_image.raw


def test_bearer_bad_credentials(registry_token: RegistryServer, token_image: PushedImage,
                                store: ContentStore) -> None:
    bad = RegistryClient(registry_token.host, credentials=Credentials(registry_token.username, "nope"))
    with pytest.raises(PermissionDenied, match=r"token server .* refused the credentials as tokenuser"):
        pull(token_image.ref, store, client=bad)
    anonymous = RegistryClient(registry_token.host, credentials=ANONYMOUS)
    with pytest.raises(PermissionDenied, match=r"requires authentication \(token server"):
        pull(token_image.ref, store, client=anonymous)
    with pytest.raises(PermissionDenied, match="requires authentication"):
        anonymous.ping()
