"""Output shapes users script against: Docker's tables, ``--format json``, and the Go-template
subset people actually use (``{{.ID}}``, ``{{.State.Status}}``, ``{{json .}}``, ``{{.Names}}``,
``table`` prefixes), rendered without a template engine."""

from __future__ import annotations

import json
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def render(template: str, obj: Any) -> str:
    """Render a Go-template subset: ``{{.A.B}}``, ``{{json .X}}``, ``{{json .}}``, literal text, \\t, \\n."""
    out = []
    rest = template.replace("\\t", "\t").replace("\\n", "\n")
    while "{{" in rest:
        before, _, after = rest.partition("{{")
        expr, _, rest = after.partition("}}")
        out.append(before)
        out.append(_eval(expr.strip(), obj))
    out.append(rest)
    return "".join(out)


def _eval(expr: str, obj: Any) -> str:
    as_json = False
    if expr.startswith("json "):
        as_json, expr = True, expr[5:].strip()
    value = obj
    if expr != ".":
        for part in expr.lstrip(".").split("."):
            value = value.get(part, "") if isinstance(value, dict) else getattr(value, part, "")
    if as_json:
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return "" if value is None else str(value)


def table(rows: list[list[str]], header: list[str]) -> str:
    all_rows = [header, *rows]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(header))]
    lines = ["   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in all_rows]
    return "\n".join(lines) + "\n"


def ago(t: float) -> str:
    """Docker's "About a minute ago" style, simplified."""
    d = max(0.0, time.time() - t)
    if d < 1:
        return "Less than a second ago"
    for unit, secs in (("weeks", 604800), ("days", 86400), ("hours", 3600), ("minutes", 60), ("seconds", 1)):
        if d >= secs:
            n = int(d // secs)
            return f"{n} {unit[:-1] if n == 1 else unit} ago"
    return "just now"


def size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.3g}{unit}" if unit != "B" else f"{int(n)}B"
        n /= 1000
    return f"{n}TB"


def render_rows(rows: list[dict[str, Any]], template: str | None) -> str | None:
    """``--format json``, ``table {{...}}`` or a Go template over ``rows``; None without one (the
    caller prints its default table)."""
    if not template:
        return None
    if template == "json":
        return "".join(json.dumps(r) + "\n" for r in rows)
    if template.startswith("table"):
        body = template[len("table"):].strip()
        heads = body.replace("{{", "").replace("}}", "").replace(".", "").upper()
        return render(heads, {}) + "\n" + "".join(render(body, r) + "\n" for r in rows)
    return "".join(render(template, r) + "\n" for r in rows)
