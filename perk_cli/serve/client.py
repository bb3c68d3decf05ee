"""A client of `perk serve` in the standard library only: `perk ask --server URL ID "question"` starts in a
fraction of a second because it never imports torch or transformers.

    answer = ask("http://127.0.0.1:8765", "m-1a2b3c", "Where is Mary?")   # {"answer", "raw", "seconds"}
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request

from perk_cli.errors import PerkError


def request(server: str, method: str, path: str, body: dict | None = None, token: str | None = None,
            timeout: float = 600.0) -> dict:
    """One JSON request; a refusal or an unreachable server is one PerkError line."""
    url = server.rstrip("/") + path
    data = json.dumps(body).encode("utf-8") if body is not None else None
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    call = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(call, timeout=timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:
        try:
            reason = json.loads(exc.read().decode("utf-8")).get("error", exc.reason)
        except (ValueError, AttributeError):
            reason = exc.reason
        raise PerkError(f"--server {server}: {exc.code} {reason}")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PerkError(f"--server {server}: cannot reach it ({reason}); is `perk serve` running there?")
    return json.loads(raw.decode("utf-8")) if raw else {}


def ask(server: str, memory_id: str, question: str, max_new_tokens: int | None = None,
        token: str | None = None) -> dict:
    body = {"question": question, **({"max_new_tokens": max_new_tokens} if max_new_tokens else {})}
    return request(server, "POST", f"/v1/memories/{urllib.parse.quote(memory_id, safe='')}/ask", body, token)
