"""``berth``: Docker's and Podman's command line over the Engine (one Engine call per command)."""
