"""Named volumes: directories berth owns under ``<root>/volumes/<name>/_data``, recorded in SQLite."""
