"""The Engine's networking: a persistent network namespace per bridge-networked container, joined to
its networks before the runtime runs, and the ``network`` commands.

A container on a bridge network (``network="bridge"`` or a network's name) gets an empty file
``<runroot>/netns/<id>`` with a new network namespace bind-mounted on it when it is created; the OCI
spec names that path, so every start (and restart) of the container reuses the same namespace,
address and published ports until ``rm``. /etc/hosts, /etc/hostname and /etc/resolv.conf are written
to the container's bundle directory and bind-mounted in. ``none`` and ``host`` (and the default,
``none``) never load the network layer, whose pyroute2 import costs ~125 ms per process.
"""

from __future__ import annotations

import contextlib
import os

from berth.errors import BerthError, InvalidArgument

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from berth.engine.engine import Container
    from berth.network.ipam import Network
    from berth.network.manager import Networks
    from berth.network.ports import PortMapping

#: Network modes that are not bridge networks.
NON_BRIDGE = (None, "", "none", "host")
ETC_FILES = (("hosts", "/etc/hosts"), ("hostname", "/etc/hostname"), ("resolv.conf", "/etc/resolv.conf"))


def uses_bridge(opts: dict[str, Any]) -> bool:
    return opts.get("network") not in NON_BRIDGE


class NetworkOps:
    """Mixed into ``Engine``; uses its ``root``, ``runroot``, ``get`` and ``_bundle_dir``."""

    if TYPE_CHECKING:
        root: str
        runroot: str
        _networks: Networks | None

        def get(self, ref: str) -> Container: ...
        def _bundle_dir(self, cid: str) -> str: ...

    @property
    def networks(self) -> Networks:
        net = getattr(self, "_networks", None)
        if net is None:
            from berth.network.manager import Networks, Settings

            net = Networks(os.path.join(self.root, "berth.db"), Settings(run_dir=os.path.join(self.runroot, "network")))
            self._networks = net
        return net

    def netns_path(self, cid: str) -> str:
        return os.path.join(self.runroot, "netns", cid)

    # ------------------------------------------------------------------ containers

    def _network_setup(self, cid: str, name: str, opts: dict[str, Any], image_cfg: dict[str, Any],
                       spec: dict[str, Any]) -> None:
        """For a bridge-networked container: make its namespace, connect it, write its /etc files and
        point ``spec`` at them. On failure, everything made here is undone by ``_network_teardown``."""
        if not uses_bridge(opts):
            for key in ("publish", "publish_all", "ip", "aliases"):
                if opts.get(key):
                    raise InvalidArgument(f"--{key.replace('_', '-')} needs a bridge network (--network bridge|NAME)")
            return
        network = opts["network"]
        networks = self.networks
        target = None if network == "bridge" else networks.get(network).name
        publish: list[Any] = list(opts.get("publish") or [])
        if opts.get("publish_all"):
            from berth.network.ports import from_exposed

            publish += from_exposed(image_cfg.get("ExposedPorts") or ())
        path = self._make_netns(cid)
        networks.connect(cid, path, target, name=name, aliases=opts.get("aliases") or (), ip=opts.get("ip"),
                         publish=publish, dns_servers=opts.get("dns") or ())
        self._write_etc_files(cid, name, spec.get("hostname") or cid[:12], opts, spec)
        for ns in spec["linux"]["namespaces"]:
            if ns["type"] == "network":
                ns["path"] = path

    def _write_etc_files(self, cid: str, name: str, hostname: str, opts: dict[str, Any], spec: dict[str, Any]) -> None:
        texts = self.networks.container_files(cid, hostname, name=name, add_hosts=opts.get("add_hosts") or (),
                                              dns_servers=opts.get("dns") or (),
                                              dns_search=opts.get("dns_search") or ())
        bundle = self._bundle_dir(cid)
        os.makedirs(bundle, mode=0o700, exist_ok=True)
        from berth.fsutil import atomic_file

        for key, dest in ETC_FILES:
            source = os.path.join(bundle, key)
            with atomic_file(source, 0o644) as f:
                f.write(texts[key].encode())
            if not any(m["destination"] == dest for m in spec["mounts"]):
                spec["mounts"].append({"destination": dest, "type": "bind", "source": source,
                                       "options": ["rbind", "rprivate", "rw"]})

    def _make_netns(self, cid: str) -> str:
        """A new network namespace kept alive by a bind mount on ``<runroot>/netns/<cid>``, with ``lo`` up."""
        import subprocess

        path = self.netns_path(cid)
        os.makedirs(os.path.dirname(path), mode=0o711, exist_ok=True)
        if os.path.ismount(path):
            return path
        with open(path, "x"):
            pass
        res = subprocess.run(["unshare", f"--net={path}", "true"], capture_output=True, text=True)
        if res.returncode != 0:
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise BerthError(f"cannot create a network namespace: {res.stderr.strip() or res.returncode}")
        from berth.network import bridge

        bridge.loopback_up(path)
        return path

    def _ensure_netns(self, c: Container) -> None:
        """On start: the namespace is on tmpfs, so after a reboot it is made and connected again."""
        if not uses_bridge(c.config) or os.path.ismount(self.netns_path(c.id)):
            return
        import json

        from berth.engine.engine import _image_config

        spec_path = os.path.join(self._bundle_dir(c.id), "config.json")
        with open(spec_path) as f:
            spec = json.load(f)
        self.networks.release_container(c.id)
        image_cfg = _image_config(self.image_store, self.image_store.get(c.image_id))  # type: ignore[attr-defined]
        self._network_setup(c.id, c.name, c.config, image_cfg, spec)

    def _network_teardown(self, cid: str, opts: dict[str, Any]) -> None:
        """Leases, veths, rules, then the namespace's mount and file; safe to repeat."""
        path = self.netns_path(cid)
        if uses_bridge(opts):
            with contextlib.suppress(BerthError):
                self.networks.release_container(cid)
        if os.path.ismount(path):
            from berth.kernel.syscalls import MNT_DETACH, umount2

            with contextlib.suppress(OSError):
                umount2(path, MNT_DETACH)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def container_ports(self, ref: str) -> list[PortMapping]:
        c = self.get(ref)
        if not uses_bridge(c.config):
            return []
        return self.networks.ports(c.id)

    def container_networks(self, c: Container) -> dict[str, Any]:
        """``inspect``'s NetworkSettings."""
        if not uses_bridge(c.config):
            return {"Networks": {c.config.get("network") or "none": {}}, "Ports": {}}
        nets: dict[str, Any] = {}
        ports: dict[str, list[dict[str, str]]] = {}
        for e in self.networks.endpoints(c.id):
            nets[e.network] = {"NetworkID": e.network_id, "IPAddress": str(e.ip), "IPPrefixLen": e.prefixlen,
                               "Gateway": str(e.gateway or ""), "MacAddress": e.mac, "Aliases": list(e.names)}
            for p in e.ports:
                ports.setdefault(f"{p.container_port}/{p.proto}", []).append(
                    {"HostIp": p.host_ip, "HostPort": str(p.host_port)})
        return {"Networks": nets, "Ports": ports}

    # ------------------------------------------------------------------ networks

    def network_create(self, name: str, **opts: Any) -> Network:
        return self.networks.create(name, **opts)

    def network_list(self) -> list[Network]:
        return self.networks.list_networks()

    def network_get(self, ref: str) -> Network:
        return self.networks.get(ref)

    def network_remove(self, ref: str) -> Network:
        return self.networks.remove(ref)

    def network_prune(self) -> list[str]:
        return self.networks.prune()

    def network_inspect(self, ref: str) -> dict[str, Any]:
        net = self.networks.get(ref)
        containers = {}
        for lease in self.networks.ipam.leases(network=net.name):
            containers[lease.container_id] = {"Name": lease.names[0] if lease.names else "",
                                              "IPv4Address": f"{lease.ip}/{net.prefixlen}", "MacAddress": lease.mac}
        from berth.engine.engine import _iso

        return {"Name": net.name, "Id": net.id, "Created": _iso(net.created), "Driver": net.driver,
                "Scope": "local", "Internal": net.internal, "EnableIPv6": False,
                "IPAM": {"Driver": "default", "Config": [{
                    "Subnet": str(net.subnet), "Gateway": str(net.gateway),
                    **({"IPRange": str(net.ip_range)} if net.ip_range else {})}]},
                "Options": {"com.docker.network.bridge.name": net.bridge, "mtu": str(net.mtu)},
                "Labels": dict(net.labels), "Containers": containers}
