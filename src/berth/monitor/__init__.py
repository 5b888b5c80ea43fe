"""The container monitor (the role conmon plays for Podman): a small process that outlives the
command that started the container, so berth needs no daemon.

One supervisor per runroot (``berth.monitor.main``) serves every running container, each driven
by one event loop (``loop``) as a state machine (``container``): it runs the OCI runtime's create
and start, becomes the containers' parent (child subreaper), holds their stdio and writes it to
json-file logs rotated by size (``logfile``), serves ``berth attach`` (``sockets``; the protocol
and its client: ``attach``), records exit statuses and OOM kills, runs health checks and applies
restart policies. Sharing one interpreter is what keeps the memory per container near conmon's;
it imports only the standard library's lightest modules (``posix``, not ``os``) and berth's own
small ones, and work that needs more (the OOM check, event records) runs in a forked child that
leaves at once. The engine reaches it through ``client``.
"""

SOCKET = "monitor.sock"  # RUNROOT/monitor.sock: where the supervisor listens
LOCK = "monitor.lock"  # held while a supervisor is started, and by one about to leave
