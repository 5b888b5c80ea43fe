"""The per-container monitor (the role conmon plays for Podman): a small process that outlives the
command that started the container, so berth needs no daemon.

It runs the OCI runtime's create and start, becomes the container's parent (child subreaper),
holds its stdio and writes it to a json-file log rotated by size, records the exit status and OOM
kills, runs health checks and applies the restart policy. It imports only the standard library's
lightest modules and berth's own small ones: its memory per container is the point.
"""
