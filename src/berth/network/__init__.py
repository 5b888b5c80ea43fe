"""Container networking (L3): bridges, veth pairs, IPAM, NAT and published ports, per-network DNS.

The engine uses one object, :class:`berth.network.manager.Networks`; the modules under it are usable
on their own and tested on their own with real network namespaces:

- ``ipam``: networks, leases, DNS names and host-port reservations in the state database (SQLite);
- ``bridge``: a bridge per network and a veth pair per container and network (netlink, pyroute2);
- ``nat``: masquerading, isolation and published ports in berth's own nftables table (or iptables);
- ``dns``: the per-network name server process, answering from the database;
- ``files``: /etc/hosts, /etc/hostname and /etc/resolv.conf texts;
- ``ports``: ``-p``/``-P`` parsing;
- ``leaks``: everything berth created, for tests and clean-up checks.

Nothing is imported here, so ``import berth.network.ports`` costs only what it uses.
"""
