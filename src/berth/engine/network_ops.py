"""The Engine's networking: a persistent network namespace per bridge-networked container, joined to
its networks before the runtime runs; live ``network connect``/``disconnect``; the ``network`` commands.

A container on bridge networks (``network="bridge"`` or a network's name, plus ``networks=[...]`` for
further ``--network`` flags) gets an empty file ``<runroot>/netns/<id>`` with a new network namespace
bind-mounted on it when it is created; the OCI spec names that path, so every start (and restart) of
the container reuses the same namespace, addresses and published ports until ``rm``, and
``network connect`` can add an interface to it at any time. ``container:NAME`` joins the namespace of
another, running container instead. /etc/hosts, /etc/hostname and /etc/resolv.conf are written to the
container's bundle directory and bind-mounted in (for ``none`` too, as Docker does); when networks are
connected or disconnected they are rewritten in place, so a running container sees the change.

``none`` and ``host`` (and the default, ``none``) never load the network layer (pyroute2, nft).

Crash safety: while a container's network is being set up or torn down, a marker
``<runroot>/network/pending/<id>`` names the berth process doing it. When the network layer is next
loaded, a marker whose process is gone means that berth was killed half way: everything the
container's network had (leases, names, ports, veths, rules, the namespace, a name server or bridge
nobody uses any more) is released, and a container whose creation never finished is removed.
"""

from __future__ import annotations

import os

from berth.errors import BerthError, Conflict, InvalidArgument, NotFound
from berth.oci import jsonc

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from berth.engine.db import Database
    from berth.engine.engine import Container
    from berth.network.ipam import Network
    from berth.network.manager import Endpoint, Networks
    from berth.network.ports import PortMapping

#: Network modes that are not bridge networks (``container:NAME`` is one too).
NON_BRIDGE = (None, "", "none", "host")
ETC_FILES = (("hosts", "/etc/hosts"), ("hostname", "/etc/hostname"), ("resolv.conf", "/etc/resolv.conf"))
#: Options that only mean something on a bridge network, with their flags.
BRIDGE_ONLY = (("publish", "-p"), ("publish_all", "-P"), ("ip", "--ip"), ("aliases", "--network-alias"))
#: What ``--network container:NAME`` cannot be combined with: the other container owns these.
SHARED_WITH_CONTAINER = (*BRIDGE_ONLY, ("hostname", "--hostname"), ("dns", "--dns"),
                         ("dns_search", "--dns-search"), ("add_hosts", "--add-host"), ("networks", "--network"))


def uses_bridge(opts: dict[str, Any]) -> bool:
    mode = opts.get("network")
    return mode not in NON_BRIDGE and not str(mode).startswith("container:")


class NetworkOps:
    """Mixed into ``Engine``; uses its ``root``, ``runroot``, ``db``, ``get`` and ``_bundle_dir``."""

    if TYPE_CHECKING:
        root: str
        runroot: str
        _networks: Networks | None

        @property
        def db(self) -> Database: ...
        def get(self, ref: str) -> Container: ...
        def _bundle_dir(self, cid: str) -> str: ...
        def _cleanup(self, cid: str) -> None: ...

    @property
    def networks(self) -> Networks:
        net = getattr(self, "_networks", None)
        if net is None:
            from berth.network.manager import Networks, Settings

            net = Networks(os.path.join(self.root, "berth.db"), Settings(run_dir=os.path.join(self.runroot, "network")))
            self._networks = net
            self._recover_network_crashes()
        return net

    def netns_path(self, cid: str) -> str:
        return os.path.join(self.runroot, "netns", cid)

    # ------------------------------------------------------------------ crash recovery

    def _pending_path(self, cid: str) -> str:
        return os.path.join(self.runroot, "network", "pending", cid)

    def _mark_pending(self, cid: str) -> None:
        from berth.runtime.state import proc_start_time

        path = self._pending_path(cid)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        with open(path, "w") as f:
            f.write(f"{os.getpid()} {proc_start_time(os.getpid())}\n")

    def _clear_pending(self, cid: str) -> None:
        try:
            os.unlink(self._pending_path(cid))
        except FileNotFoundError:
            pass

    def _recover_network_crashes(self) -> list[str]:
        """Undo the network work of berth processes killed half way (see the module's docstring);
        returns the ids of the containers concerned."""
        from berth.runtime.state import proc_start_time

        directory = os.path.dirname(self._pending_path("x"))
        try:
            entries = os.listdir(directory)
        except FileNotFoundError:
            return []
        crashed = []
        for cid in entries:
            try:
                with open(os.path.join(directory, cid)) as f:
                    pid, start = f.read().split()
            except (OSError, ValueError):
                continue  # being written right now
            if start != "None" and str(proc_start_time(int(pid))) == start:
                continue  # its berth is still at work
            crashed.append(cid)
            self._network_teardown(cid, {"network": "bridge"})
            try:
                self.get(cid)
            except NotFound:
                continue
            if not os.path.exists(os.path.join(self._bundle_dir(cid), "config.json")):
                self._cleanup(cid)  # killed inside create: the container never existed for the user
        if crashed:
            assert self._networks is not None
            self._networks.teardown_idle()
        return crashed

    # ------------------------------------------------------------------ containers

    def _network_setup(self, cid: str, name: str, opts: dict[str, Any], image_cfg: dict[str, Any],
                       spec: dict[str, Any]) -> None:
        """Give a container being created its network: point ``spec`` at the namespace and at its /etc
        files. On failure, the caller's clean-up (``_network_teardown``) undoes everything made here."""
        mode = opts.get("network") or "none"
        if mode.startswith("container:"):
            self._join_container(mode[len("container:"):], opts, spec)
            return
        if not uses_bridge(opts):
            for key, flag in (*BRIDGE_ONLY, ("networks", "--network")):
                if opts.get(key):
                    raise InvalidArgument(f"{flag} needs a bridge network (--network bridge|NAME)")
            self._write_etc_files(cid, self._standalone_etc(mode, opts, spec), spec)
            return
        networks = self.networks
        from berth.network.manager import crash_point

        first = {"name": mode, "aliases": opts.get("aliases") or (), "ip": opts.get("ip")}
        wanted = [first, *(opts.get("networks") or ())]
        targets = [networks.get(w["name"]).name for w in wanted]
        if len(set(targets)) != len(targets):
            raise InvalidArgument("a container can join each network only once")
        publish: list[Any] = list(opts.get("publish") or [])
        if opts.get("publish_all"):
            from berth.network.ports import from_exposed

            publish += from_exposed(image_cfg.get("ExposedPorts") or ())
        self._mark_pending(cid)
        path = self._make_netns(cid)
        for n, (want, target) in enumerate(zip(wanted, targets, strict=True)):
            networks.connect(cid, path, target, name=name, aliases=want.get("aliases") or (), ip=want.get("ip"),
                             ifname=f"eth{n}", publish=publish if n == 0 else (), dns_servers=opts.get("dns") or ())
        crash_point("files")
        self._write_etc_files(cid, self._bridge_etc(cid, name, spec.get("hostname") or cid[:12], opts), spec)
        for ns in spec["linux"]["namespaces"]:
            if ns["type"] == "network":
                ns["path"] = path
        self._clear_pending(cid)

    def _standalone_etc(self, mode: str, opts: dict[str, Any], spec: dict[str, Any]) -> dict[str, str]:
        """/etc files for ``none`` (localhost only) and ``host`` (the host's names and resolvers, and
        its hostname unless ``--hostname`` says otherwise), with ``--add-host``/``--dns*`` applied."""
        from berth.network import files

        if mode == "host":
            import socket

            if not opts.get("hostname"):
                spec["hostname"] = socket.gethostname()
                env = spec["process"]["env"]
                env[:] = [e for e in env if not e.startswith("HOSTNAME=")] + [f"HOSTNAME={spec['hostname']}"]
            try:
                with open("/etc/hosts") as f:
                    hosts = f.read()
            except OSError:
                hosts = files.hosts_file(spec["hostname"])
            if not hosts.endswith("\n"):
                hosts += "\n"
            hosts += files.add_host_lines(opts.get("add_hosts") or ())
        else:
            hosts = files.hosts_file(spec["hostname"], add_hosts=opts.get("add_hosts") or ())
        resolv = files.resolv_conf(dns=opts.get("dns") or (), dns_search=opts.get("dns_search") or (),
                                   host_network=mode == "host")
        return {"hosts": hosts, "hostname": files.hostname_file(spec["hostname"]), "resolv.conf": resolv}

    def _join_container(self, ref: str, opts: dict[str, Any], spec: dict[str, Any]) -> None:
        """``--network container:NAME``: the other container's namespace, hostname and /etc files."""
        for key, flag in SHARED_WITH_CONTAINER:
            if opts.get(key):
                raise InvalidArgument(f"conflicting options: {flag} and --network container:{ref}")
        other = self.get(ref)
        if other.status != "running":
            raise Conflict(f"cannot join the network of container {other.name}: it is not running")
        mode = other.config.get("network") or "none"
        if mode == "host":
            spec["linux"]["namespaces"] = [ns for ns in spec["linux"]["namespaces"] if ns["type"] != "network"]
        else:
            path = self.netns_path(other.id) if uses_bridge(other.config) else f"/proc/{other.pid}/ns/net"
            for ns in spec["linux"]["namespaces"]:
                if ns["type"] == "network":
                    ns["path"] = path
        bundle = self._bundle_dir(other.id)
        try:
            with open(os.path.join(bundle, "config.json")) as f:
                spec["hostname"] = jsonc.loads(f.read()).get("hostname") or spec["hostname"]
        except (OSError, ValueError):
            pass
        for key, dest in ETC_FILES:
            source = os.path.join(bundle, key)
            if os.path.exists(source):
                spec["mounts"].append({"destination": dest, "type": "bind", "source": source,
                                       "options": ["rbind", "rprivate", "rw"]})

    def _bridge_etc(self, cid: str, name: str, hostname: str, opts: dict[str, Any]) -> dict[str, str]:
        return self.networks.container_files(cid, hostname, name=name, add_hosts=opts.get("add_hosts") or (),
                                             dns_servers=opts.get("dns") or (),
                                             dns_search=opts.get("dns_search") or ())

    def _write_etc_files(self, cid: str, texts: dict[str, str], spec: dict[str, Any]) -> None:
        """Write the files into the bundle and mount them, unless the user mounts something else there.
        They are derived data (remade whenever the namespace is), so they are not fsynced."""
        bundle = self._bundle_dir(cid)
        os.makedirs(bundle, mode=0o700, exist_ok=True)
        for key, dest in ETC_FILES:
            source = os.path.join(bundle, key)
            mounted = [m for m in spec["mounts"] if m["destination"] == dest]
            if mounted and mounted[-1].get("source") != source:
                continue
            with open(source, "w") as f:
                f.write(texts[key])
            if not mounted:
                spec["mounts"].append({"destination": dest, "type": "bind", "source": source,
                                       "options": ["rbind", "rprivate", "rw"]})

    def _rewrite_etc_files(self, c: Container) -> None:
        """After connect/disconnect: the files again, written in place (a rename would leave the
        container's bind mounts on the old files)."""
        texts = self._bridge_etc(c.id, c.name, c.config.get("hostname") or c.id[:12], c.config)
        bundle = self._bundle_dir(c.id)
        for key in ("hosts", "resolv.conf"):
            path = os.path.join(bundle, key)
            if os.path.exists(path):
                with open(path, "r+") as f:
                    f.write(texts[key])
                    f.truncate()

    def _make_netns(self, cid: str) -> str:
        """A new network namespace kept alive by a bind mount on ``<runroot>/netns/<cid>``, with ``lo`` up."""
        from berth.network import bridge
        from berth.network.manager import crash_point

        path = self.netns_path(cid)
        os.makedirs(os.path.dirname(path), mode=0o711, exist_ok=True)
        if os.path.ismount(path):
            return path
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))  # the mount point
        try:
            bridge.new_netns(path)
        except OSError as e:
            try:
                os.unlink(path)
            except OSError:
                pass
            raise BerthError(f"cannot create a network namespace: {e}") from None
        crash_point("netns")
        return path

    def _ensure_netns(self, c: Container) -> None:
        """On start: the namespace is on tmpfs, so after a reboot (or a crash clean-up) it is made and
        connected again, to the networks the container's leases name (those it was connected to
        last, ``network connect`` included), else to those it was created with."""
        if not uses_bridge(c.config) or os.path.ismount(self.netns_path(c.id)):
            return
        import json

        from berth.engine.engine import _image_config

        spec_path = os.path.join(self._bundle_dir(c.id), "config.json")
        with open(spec_path) as f:
            spec = json.load(f)
        opts = dict(c.config)
        endpoints = self.networks.endpoints(c.id)
        if endpoints:
            asked = [{"name": opts["network"], "ip": opts.get("ip")}, *(opts.get("networks") or ())]
            ips = {self.networks.get(a["name"]).name: a.get("ip") for a in asked if a.get("ip")}
            first, *rest = endpoints
            opts.update(network=first.network, aliases=_aliases(first, c), ip=ips.get(first.network),
                        networks=[{"name": e.network, "aliases": _aliases(e, c), "ip": ips.get(e.network)}
                                  for e in rest])
        self.networks.release_container(c.id)
        image_cfg = _image_config(self.image_store, self.image_store.get(c.image_id))  # type: ignore[attr-defined]
        self._network_setup(c.id, c.name, opts, image_cfg, spec)

    def _network_teardown(self, cid: str, opts: dict[str, Any]) -> None:
        """Leases, veths, rules, then the namespace's mount and file; safe to repeat."""
        path = self.netns_path(cid)
        bridged = uses_bridge(opts)
        if bridged:
            self._mark_pending(cid)
            try:
                self.networks.release_container(cid)
            except BerthError:
                pass
        if os.path.ismount(path):
            from berth.kernel.syscalls import MNT_DETACH, umount2

            try:
                umount2(path, MNT_DETACH)
            except OSError:
                pass
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        if bridged:
            self._clear_pending(cid)

    # ------------------------------------------------------------------ connect / disconnect

    def network_connect(self, network: str, ref: str, *, ip: str | None = None,
                        aliases: Sequence[str] = ()) -> Endpoint:
        """``network connect``: a new interface (eth1, eth2...) in the container's namespace, live;
        its names resolve on the network at once and its /etc/hosts gains the new address."""
        c = self.get(ref)
        mode = c.config.get("network") or "none"
        if not uses_bridge(c.config):
            raise Conflict(f"container {c.name} uses --network {mode}: it cannot be connected to other networks")
        networks = self.networks
        net = networks.get(network)
        if not os.path.ismount(self.netns_path(c.id)):
            self._ensure_netns(c)
        if networks.ipam.lease(net.name, c.id) is not None:
            raise Conflict(f"container {c.name} is already connected to network {net.name}")
        used = {e.ifname for e in networks.endpoints(c.id)}
        ifname = next(f"eth{n}" for n in range(len(used) + 1) if f"eth{n}" not in used)
        self._mark_pending(c.id)
        try:
            ep = networks.connect(c.id, self.netns_path(c.id), net.name, name=c.name, aliases=aliases, ip=ip,
                                  ifname=ifname, dns_servers=c.config.get("dns") or ())
        finally:
            self._clear_pending(c.id)
        self._rewrite_etc_files(c)
        return ep

    def network_disconnect(self, network: str, ref: str, *, force: bool = False) -> None:
        """``network disconnect``: the interface goes, and so do the container's names on the network
        and its address in /etc/hosts; if it carried the default route, another network's gateway
        (if any) takes over. With ``force``, a container that no longer exists is taken off too."""
        networks = self.networks
        net = networks.get(network)
        try:
            c = self.get(ref)
        except NotFound:
            if force and networks.ipam.lease(net.name, ref) is not None:
                networks.disconnect(ref, net.name)
                return
            raise
        if not uses_bridge(c.config):
            raise Conflict(f"container {c.name} uses --network {c.config.get('network') or 'none'}: "
                           f"it is on no network to disconnect from")
        self._mark_pending(c.id)
        try:
            connected = networks.disconnect(c.id, net.name)
        finally:
            self._clear_pending(c.id)
        if not connected:
            if force:
                return
            raise NotFound(f"container {c.name} is not connected to network {net.name}")
        left = [(e.gateway, e.ifname) for e in networks.endpoints(c.id) if e.gateway is not None]
        if left and os.path.ismount(self.netns_path(c.id)):
            from berth.network import bridge

            bridge.ensure_default_route(self.netns_path(c.id), *left[0])
        self._rewrite_etc_files(c)

    # ------------------------------------------------------------------ what ps, port and inspect show

    def container_ports(self, ref: str) -> list[PortMapping]:
        c = self.get(ref)
        if not uses_bridge(c.config):
            return []
        return self.networks.ports(c.id)

    def ports_by_container(self, containers: Sequence[Container]) -> dict[str, list[PortMapping]]:
        """Published ports of each of ``containers`` (``ps``), without loading the network layer when
        none of them is on a bridge network."""
        wanted = {c.id for c in containers if uses_bridge(c.config)}
        if not wanted:
            return {}
        return {cid: ports for cid, ports in self.networks.ipam.all_ports().items() if cid in wanted}

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


def _aliases(e: Endpoint, c: Container) -> list[str]:
    """The ``--network-alias`` values behind an endpoint's DNS names (which add the name and short id)."""
    return [n for n in e.names if n not in (c.name, c.id[:12])]
