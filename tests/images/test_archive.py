"""berth.images.archive: docker-archive and OCI layouts both ways, rootfs import, and interop with umoci,
skopeo and podman."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from img_helpers import add_image, entry, layer, make_tar

from berth.errors import InvalidArgument, NotFound
from berth.images.archive import import_rootfs, load, save
from berth.images.store import ImageStore
from berth.oci.digest import Digest
from berth.oci.image import MEDIA_TYPE_LAYER, MEDIA_TYPE_LAYER_GZIP, ContainerConfig

L1 = layer([entry("dir", "etc"), entry("file", "etc/os-release", b"ID=berth\n"), entry("file", "bin/sh", b"elf")])
L2 = layer([entry("file", "app/main", b"print(1)\n"), entry("whiteout", "bin/sh")], "zstd")
L3 = layer([entry("file", "extra", b"3")], None)


def new_store(path: Path) -> ImageStore:
    return ImageStore(path, snapshotter_kind="copy")


@pytest.fixture
def src(tmp_path: Path) -> Iterator[ImageStore]:
    s = new_store(tmp_path / "src")
    yield s
    s.close()


@pytest.fixture
def dst(tmp_path: Path) -> Iterator[ImageStore]:
    s = new_store(tmp_path / "dst")
    yield s
    s.close()


def rootfs_of(store: ImageStore, name: str) -> Path:
    top = store.unpack(name)
    assert top is not None
    return Path(store.snapshots.mounts(str(top))[0].source)


# --- round trips ---------------------------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize("fmt", ["docker-archive", "oci-archive", "oci-dir"])
def test_round_trip(src: ImageStore, dst: ImageStore, tmp_path: Path, fmt: str) -> None:
    img = add_image(src, [L1, L2], ["example/app:1.0", "localhost:5000/app"])
    base = add_image(src, [L1, L3], ["example/base"])
    out = tmp_path / ("out" if fmt == "oci-dir" else "out.tar")
    save(src, ["example/app:1.0", "localhost:5000/app", base.id], out, fmt)
    loaded = load(dst, out)
    assert {i.id for i in loaded} == {img.id, base.id}
    got = dst.get("example/app:1.0")
    assert got.id == img.id and dst.get("localhost:5000/app").id == img.id
    assert got.diff_ids == img.diff_ids
    assert dst.get(base.id).names == ()  # saved by ID: no name
    if fmt != "docker-archive":  # OCI layouts keep manifests and blobs byte for byte
        assert got.manifest_digest == img.manifest_digest
        assert [d.digest for d in got.layers] == [d.digest for d in img.layers]
    else:  # docker-archive layers are uncompressed tars: their digests are the DiffIDs
        assert [d.digest for d in got.layers] == list(img.diff_ids)
        assert {d.media_type for d in got.layers} == {MEDIA_TYPE_LAYER}
    root = rootfs_of(dst, "example/app:1.0")
    assert (root / "app/main").read_text() == "print(1)\n" and not (root / "bin/sh").exists()


@pytest.mark.unit
def test_docker_archive_layout(src: ImageStore, tmp_path: Path) -> None:
    add_image(src, [L1, L2], ["example/app:1.0"])
    add_image(src, [L1, L3], ["busybox"])
    out = tmp_path / "out.tar"
    save(src, ["example/app:1.0", "busybox"], out)
    with tarfile.open(out) as tf:
        names = tf.getnames()
        manifest = json.load(tf.extractfile("manifest.json"))  # type: ignore[arg-type]
        repositories = json.load(tf.extractfile("repositories"))  # type: ignore[arg-type]
        layer_tar = tf.extractfile(f"{L2[1].encoded}.tar").read()  # type: ignore[union-attr]
    assert names.count(f"{L1[1].encoded}.tar") == 1  # a shared layer is written once
    assert [m["RepoTags"] for m in manifest] == [["example/app:1.0"], ["busybox:latest"]]
    assert repositories == {"example/app": {"1.0": L2[1].encoded}, "busybox": {"latest": L3[1].encoded}}
    assert Digest.from_bytes(layer_tar) == L2[1]  # decompressed from the zstd blob


@pytest.mark.unit
def test_load_compressed_archive_and_pipe(src: ImageStore, dst: ImageStore, tmp_path: Path) -> None:
    img = add_image(src, [L1], ["piped"])
    buf = io.BytesIO()
    save(src, ["piped"], buf)
    (tmp_path / "a.tar.gz").write_bytes(gzip.compress(buf.getvalue()))
    assert load(dst, tmp_path / "a.tar.gz")[0].id == img.id
    dst.remove("piped")
    r, w = os.pipe()
    data = buf.getvalue()

    def feed() -> None:
        with os.fdopen(w, "wb") as f:
            f.write(data)

    t = threading.Thread(target=feed)
    t.start()
    with os.fdopen(r, "rb") as stream:
        assert load(dst, stream)[0].id == img.id
    t.join()


@pytest.mark.unit
def test_oci_multi_platform_index(src: ImageStore, dst: ImageStore, tmp_path: Path) -> None:
    """A layout whose index lists one image for two platforms loads the host's."""
    amd = add_image(src, [L1], ["multi:amd64"])
    save(src, ["multi:amd64"], tmp_path / "lay", "oci-dir")
    index = json.loads((tmp_path / "lay/index.json").read_text())
    entry_ = index["manifests"][0]
    other = dict(entry_, platform={"os": "linux", "architecture": "s390x"})
    index["manifests"] = [other, dict(entry_, platform={"os": "linux", "architecture": "amd64"})]
    for m in index["manifests"]:
        m["annotations"] = {"org.opencontainers.image.ref.name": "1"}
    (tmp_path / "lay/index.json").write_text(json.dumps(index))
    from berth.oci.image import Platform

    loaded = load(dst, tmp_path / "lay", platform=Platform("linux", "amd64"), default_name="example/multi")
    assert [i.id for i in loaded] == [amd.id]
    assert loaded[0].names == ("docker.io/example/multi:1",)


# --- import ----------------------------------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize("compression", [None, "gzip", "xz"])
def test_import_rootfs(dst: ImageStore, tmp_path: Path, compression: str | None) -> None:
    raw = make_tar([entry("dir", "./"), entry("file", "./bin/hello", b"hi", mode=0o755),
                    entry("symlink", "./sh", "bin/hello")])
    path = tmp_path / "rootfs.tar"
    if compression == "gzip":
        path.write_bytes(gzip.compress(raw))
    elif compression == "xz":
        import lzma

        path.write_bytes(lzma.compress(raw))
    else:
        path.write_bytes(raw)
    img = import_rootfs(dst, path, names=["imported:v1"], config=ContainerConfig(cmd=("/sh",)),
                        comment="from a tarball")
    assert img.diff_ids == (Digest.from_bytes(raw),)
    assert img.layers[0].media_type == (MEDIA_TYPE_LAYER_GZIP if compression == "gzip" else MEDIA_TYPE_LAYER)
    config = dst.config(img)
    assert config.config is not None and config.config.cmd == ("/sh",)
    assert config.os == "linux" and config.history and config.history[0].comment == "from a tarball"
    root = rootfs_of(dst, "imported:v1")
    assert (root / "bin/hello").read_bytes() == b"hi" and os.readlink(root / "sh") == "bin/hello"


@pytest.mark.unit
def test_import_refuses_non_tar(dst: ImageStore, tmp_path: Path) -> None:
    (tmp_path / "x").write_bytes(b"hello" * 300)
    with pytest.raises(InvalidArgument):
        import_rootfs(dst, tmp_path / "x")
    assert dst.images() == []


# --- damaged and hostile archives -----------------------------------------------------------------------------


def docker_archive(tmp_path: Path, manifest: list, files: dict[str, bytes]) -> Path:
    out = tmp_path / "hostile.tar"
    with tarfile.open(out, "w") as tf:
        for name, data in [*files.items(), ("manifest.json", json.dumps(manifest).encode())]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return out


@pytest.mark.unit
def test_docker_layer_must_match_its_diff_id(src: ImageStore, dst: ImageStore, tmp_path: Path) -> None:
    img = add_image(src, [L1], ["x"])
    config = src.content.read_bytes(img.id)
    bad = docker_archive(tmp_path, [{"Config": "c.json", "RepoTags": ["x:1"], "Layers": ["l.tar"]}],
                         {"c.json": config, "l.tar": make_tar([entry("file", "evil", b"swapped")])})
    with pytest.raises(InvalidArgument, match="DiffID"):
        load(dst, bad)
    assert dst.images() == [] and list(dst.content.walk()) == []


@pytest.mark.unit
def test_archive_paths_never_reach_the_host(src: ImageStore, dst: ImageStore, tmp_path: Path) -> None:
    img = add_image(src, [L1], ["x"])
    config = src.content.read_bytes(img.id)
    bad = docker_archive(tmp_path, [{"Config": "c.json", "Layers": ["../../../../etc/passwd"]}], {"c.json": config})
    with pytest.raises(InvalidArgument, match="climbs out"):
        load(dst, bad)
    bad = docker_archive(tmp_path, [{"Config": "/etc/passwd", "Layers": []}], {})
    with pytest.raises(NotFound):
        load(dst, bad)


@pytest.mark.unit
def test_oci_blob_tampering_is_detected(src: ImageStore, dst: ImageStore, tmp_path: Path) -> None:
    img = add_image(src, [L1], ["x"])
    save(src, ["x"], tmp_path / "lay", "oci-dir")
    blob = tmp_path / "lay/blobs/sha256" / img.layers[0].digest.encoded
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(InvalidArgument):
        load(dst, tmp_path / "lay")
    assert dst.images() == []
    # A blob replaced by a symlink to a host file is resolved inside the layout, where it is missing.
    blob.unlink()
    blob.symlink_to("/etc/passwd")
    with pytest.raises(NotFound):
        load(dst, tmp_path / "lay")


@pytest.mark.unit
def test_neither_format(dst: ImageStore, tmp_path: Path) -> None:
    (tmp_path / "t.tar").write_bytes(make_tar([entry("file", "hello", b"x")]))
    with pytest.raises(InvalidArgument, match="neither"):
        load(dst, tmp_path / "t.tar")


# --- interop with other tools --------------------------------------------------------------------------------


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


def run(*argv: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, f"{' '.join(argv)}: {proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def small_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("interop") / "rootfs"
    (root / "bin").mkdir(parents=True)
    busybox = "/bin/busybox"
    if not os.path.exists(busybox):
        pytest.skip("busybox-static is not installed")
    shutil.copy2(busybox, root / "bin/busybox")
    (root / "bin/sh").symlink_to("busybox")
    (root / "etc").mkdir()
    (root / "etc/motd").write_text("made by another tool\n")
    return root


@pytest.fixture(scope="module")
def umoci_layout(small_rootfs: Path) -> Path:
    umoci = tool("umoci")
    layout = small_rootfs.parent / "layout"
    run(umoci, "init", "--layout", str(layout))
    run(umoci, "new", "--image", f"{layout}:bb")
    run(umoci, "insert", "--image", f"{layout}:bb", str(small_rootfs), "/")
    run(umoci, "config", "--image", f"{layout}:bb", "--config.cmd", "/bin/sh")
    return layout


class Podman:
    def __init__(self, base: Path) -> None:
        self.exe = tool("podman")
        conf = base / "containers.conf"
        conf.write_text('[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n'
                        '[engine]\ncgroup_manager = "cgroupfs"\n')
        self.env = dict(os.environ, CONTAINERS_CONF=str(conf))
        self.args = ["--root", str(base / "root"), "--runroot", str(base / "run"), "--storage-driver", "vfs"]

    def __call__(self, *argv: str) -> str:
        return run(self.exe, *self.args, *argv, env=self.env)


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    if os.geteuid() != 0:
        pytest.skip("podman with a private root needs root here")
    # A private --root/--runroot with the vfs driver: nothing mounted, nothing shared with the host's podman
    # (no `system reset`, which would also touch the host's network configuration).
    yield Podman(tmp_path_factory.mktemp("podman"))


@pytest.mark.integration
def test_load_umoci_layout(umoci_layout: Path, dst: ImageStore) -> None:
    [img] = load(dst, umoci_layout, default_name="example/umoci")
    assert img.names == ("docker.io/example/umoci:bb",)
    root = rootfs_of(dst, img.names[0])
    assert (root / "etc/motd").read_text() == "made by another tool\n"
    assert os.readlink(root / "bin/sh") == "busybox"


@pytest.mark.integration
def test_load_skopeo_docker_archive(umoci_layout: Path, dst: ImageStore, tmp_path: Path) -> None:
    skopeo = tool("skopeo")
    out = tmp_path / "skopeo.tar"
    run(skopeo, "copy", f"oci:{umoci_layout}:bb", f"docker-archive:{out}:example/bb:v1")
    [img] = load(dst, out)
    assert img.names == ("docker.io/example/bb:v1",)
    assert (rootfs_of(dst, "example/bb:v1") / "bin/busybox").stat().st_size > 100_000


@pytest.mark.integration
@pytest.mark.parametrize("fmt", ["docker-archive", "oci-archive"])
def test_load_podman_save(podman: Podman, small_rootfs: Path, dst: ImageStore, tmp_path: Path, fmt: str) -> None:
    rootfs_tar = tmp_path / "rootfs.tar"
    with tarfile.open(rootfs_tar, "w") as tf:
        tf.add(small_rootfs, arcname=".")
    podman("import", str(rootfs_tar), "localhost/imported:1")
    out = tmp_path / "podman.tar"
    podman("save", "--format", fmt, "-o", str(out), "localhost/imported:1")
    [img] = load(dst, out)
    assert img.names == ("localhost/imported:1",)
    podman_id = podman("image", "inspect", "--format", "{{.Id}}", "localhost/imported:1").strip()
    assert img.id.hex == podman_id
    assert (rootfs_of(dst, "localhost/imported:1") / "etc/motd").exists()


@pytest.fixture
def berth_image(small_rootfs: Path, src: ImageStore, tmp_path: Path) -> ImageStore:
    rootfs_tar = tmp_path / "rootfs.tar.gz"
    with tarfile.open(rootfs_tar, "w:gz") as tf:
        tf.add(small_rootfs, arcname=".")
    import_rootfs(src, rootfs_tar, names=["localhost/berth/made:1"], config=ContainerConfig(cmd=("/bin/sh",)))
    return src


@pytest.mark.integration
@pytest.mark.parametrize("fmt", ["docker-archive", "oci-archive"])
def test_berth_archives_read_by_skopeo(berth_image: ImageStore, tmp_path: Path, fmt: str) -> None:
    skopeo = tool("skopeo")
    out = tmp_path / "berth.tar"
    save(berth_image, ["localhost/berth/made:1"], out, fmt)
    img = berth_image.get("localhost/berth/made:1")
    ref = f"{fmt}:{out}" if fmt == "docker-archive" else f"{fmt}:{out}:1"
    info = json.loads(run(skopeo, "inspect", ref))
    assert info["Layers"] and info["Os"] == "linux"
    config = json.loads(run(skopeo, "inspect", "--config", ref))
    assert config["rootfs"]["diff_ids"] == [str(d) for d in img.diff_ids]
    if fmt == "docker-archive":  # skopeo finds the image by its RepoTags entry too
        by_name = json.loads(run(skopeo, "inspect", f"{fmt}:{out}:localhost/berth/made:1"))
        assert by_name["Digest"] == info["Digest"]


@pytest.mark.integration
@pytest.mark.parametrize("fmt", ["docker-archive", "oci-archive"])
def test_berth_archives_loaded_by_podman(podman: Podman, berth_image: ImageStore, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / "berth.tar"
    save(berth_image, ["localhost/berth/made:1"], out, fmt)
    podman("load", "-i", str(out))
    img = berth_image.get("localhost/berth/made:1")
    podman_id = podman("image", "inspect", "--format", "{{.Id}}", "localhost/berth/made:1").strip()
    assert podman_id == img.id.hex
    podman("rmi", "localhost/berth/made:1")
