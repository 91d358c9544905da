"""Readiness and liveness, as calico/node answers its probes.

The daemon serves felix's health endpoint (FELIX_HEALTHHOST:FELIX_HEALTHPORT, default
localhost:9099): GET /readiness and /liveness answer 200, or 503 with what is wrong. The
probe flags of `calico-node` check, as Calico's do:

    -felix-ready   GET /readiness           -felix-live   GET /liveness
    -bird-ready    BIRD answers; every BGP peer Established while the node is starting
                   (nodename file newer than -threshold-time), else at least one
    -bird-live     BIRD answers `show status` on bird.ctl
    (-bird6-ready / -bird6-live: the same on bird6.ctl)

Each prints Calico's message and exits 1 when the check fails.
"""

from __future__ import annotations

import http.server
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from pycni.calico.node.bird import control


class HealthServer:
    def __init__(self, host: str, port: int, problems: Callable[[], list[str]], live: Callable[[], bool]) -> None:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/readiness":
                    issues = owner.problems()
                    self._answer(503 if issues else 200, "\n".join(issues) or "ready")
                elif self.path.rstrip("/") == "/liveness":
                    ok = owner.live()
                    self._answer(200 if ok else 503, "live" if ok else "calico-node's main loop is stuck")
                else:
                    self._answer(404, "not found")

            def _answer(self, code: int, text: str) -> None:
                body = (text + "\n").encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.problems, self.live = problems, live
        self.server = http.server.ThreadingHTTPServer((host, port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="health", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _http(url: str, timeout: float) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), resp.read().decode(errors="replace").strip()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode(errors="replace").strip()


def felix_check(host: str, port: int, probe: str, timeout: float) -> str:
    """ "" when felix's endpoint says ready/live, else Calico's message (with the reason)."""
    url = f"http://{host if ':' not in host else '[' + host + ']'}:{port}/{probe}"
    try:
        code, text = _http(url, timeout)
    except (OSError, urllib.error.URLError) as exc:
        reason = getattr(exc, "reason", exc)
        return f'Get "{url}": {reason}'
    if code < 200 or code >= 400:
        return f"{probe} probe reporting {code}: {text}"
    return ""


def bird_ready(socket_path: str, version: int, nodename_file: str, threshold: float) -> str:
    try:
        started = os.stat(nodename_file).st_mtime
    except OSError as exc:
        return f"failed to stat() nodename file: {exc.strerror}"
    try:
        peers = control.bgp_peers(socket_path, version)
    except control.BirdError as exc:
        return str(exc)
    down = [p.address for p in peers if p.bgp_state != "Established"]
    established = len(peers) - len(down)
    if not peers:
        return ""
    if time.time() - started < threshold:
        if down:
            return f"BGP not established with {','.join(down)}"
        try:
            if control.graceful_restart_in_progress(socket_path):
                return "graceful restart in progress"
        except control.BirdError as exc:
            return str(exc)
        return ""
    if established:
        return ""
    return f"BGP not established with {','.join(down)}"


def bird_live(socket_path: str) -> str:
    try:
        text = control.status(socket_path)
    except control.BirdError as exc:
        return f"bird is not live: {exc}"
    if not text.startswith("BIRD"):
        return f"bad response from bird: {text}"
    return ""
