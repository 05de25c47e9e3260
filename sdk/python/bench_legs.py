#!/usr/bin/env python3
"""Where the time of ``sb.run("true")`` goes: the same command over each leg of the
path, the legs taking turns in one run (so a busy machine weighs on all alike).

    WARREN_URL=… WARREN_API_KEY=… python sdk/python/bench_legs.py [--image I]
        [--runs 200] [--agent-socket PATH]

Legs, each on a connection held for the whole run:

- ``sdk sync``: ``sb.run("true")``, as a program calls it (a hop to the SDK's loop thread);
- ``sdk async``: ``await sb.run("true")`` timed on the SDK's loop (no thread hop);
- ``asyncssh, SDK's line``: asyncssh's own ``conn.run`` of the line the SDK sends
  (its prologue: ``printf $$; exec $SHELL -c true``) through the gateway;
- ``asyncssh, true``: ``conn.run("true")`` through the gateway;
- ``agent direct``: ``conn.run("true")`` on the agent's socket (``--agent-socket``,
  the sandbox's ``agent.sock`` on the runner's host, or ``auto``: found with
  ``docker inspect`` on a Docker runner of this host; a token login), no gateway.

Prints a Markdown table of p50 / p90 / p99 per leg. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import time
import warnings
from typing import Awaitable, Callable

with warnings.catch_warnings():
    warnings.filterwarnings("ignore")
    import asyncssh
    import warren
    from warren import _process, _sync
    from warren._ssh import _CIPHERS


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


async def raw_gateway(sb: warren.Sandbox) -> asyncssh.SSHClientConnection:
    inner = sb._a
    conn = await inner._connection()
    return await asyncssh.connect(
        conn.host, conn.port, username=conn.username, password=conn._password,
        known_hosts=(conn._host_keys, [], []), client_keys=None, agent_path=None,
        config=None, preferred_auth="password", encryption_algs=_CIPHERS,
    )


async def raw_agent(path: str, sandbox: str, token: str) -> asyncssh.SSHClientConnection:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    return await asyncssh.connect(
        "agent", sock=sock, username=sandbox, password=token, known_hosts=None,
        client_keys=None, agent_path=None, config=None, preferred_auth="password",
        encryption_algs=_CIPHERS,
    )


def docker_agent_socket(sandbox: str) -> str:
    """The agent's socket of a Docker sandbox: in the run directory mounted at
    ``/.warren/run`` in its container."""
    out = subprocess.run(
        ["docker", "inspect", "--format",
         '{{range .Mounts}}{{if eq .Destination "/.warren/run"}}{{.Source}}{{end}}{{end}}',
         f"warren-{sandbox}"],
        check=True, capture_output=True, text=True,
    )
    return os.path.join(out.stdout.strip(), "agent.sock")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--image", default=os.environ.get("WARREN_TEST_IMAGE", "warren-busybox:latest"))
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--agent-socket", help="the sandbox agent's socket on the runner's host")
    ap.add_argument("--sandbox", help="an existing sandbox (with --token), else one is made")
    ap.add_argument("--token", help="the sandbox's token, for --agent-socket")
    args = ap.parse_args()

    client = warren.Warren()
    made = None
    if args.sandbox:
        sb = client.sandbox(args.sandbox)
        token = args.token
    else:
        made = sb = client.create(args.image)
        token = sb.token
        print(f"sandbox {sb.id}", flush=True)
    try:
        legs: dict[str, Callable[[], float]] = {}

        def on_loop(make: Callable[[], Awaitable[object]]) -> Callable[[], float]:
            async def timed() -> float:
                t = time.perf_counter()
                await make()
                return time.perf_counter() - t
            return lambda: _sync._run(timed())

        def sync_run() -> float:
            t = time.perf_counter()
            sb.run("true")
            return time.perf_counter() - t

        sb.run("true")  # connect
        legs["sdk sync: `sb.run(\"true\")`"] = sync_run
        legs["sdk async: `await sb.run(\"true\")`"] = on_loop(lambda: sb._a.run("true"))
        gw = _sync._run(raw_gateway(sb))
        line = _process.wrap("true", None, None)
        legs["asyncssh via gateway, the SDK's line"] = on_loop(lambda: gw.run(line, stdin=asyncssh.DEVNULL))
        legs["asyncssh via gateway, `true`"] = on_loop(lambda: gw.run("true", stdin=asyncssh.DEVNULL))
        if args.agent_socket:
            path = docker_agent_socket(sb.id) if args.agent_socket == "auto" else args.agent_socket
            agent = _sync._run(raw_agent(path, sb.id, token or ""))
            legs["asyncssh to the agent's socket, the SDK's line"] = on_loop(lambda: agent.run(line, stdin=asyncssh.DEVNULL))
            legs["asyncssh to the agent's socket, `true`"] = on_loop(lambda: agent.run("true", stdin=asyncssh.DEVNULL))
        times: dict[str, list[float]] = {name: [] for name in legs}
        for name, leg in legs.items():  # warm up
            for _ in range(5):
                leg()
        for _ in range(args.runs):
            for name, leg in legs.items():
                times[name].append(leg())
        load = os.getloadavg()
        print(f"\n{args.runs} runs per leg, legs taking turns; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n")
        print("| leg | p50 | p90 | p99 |\n|---|---:|---:|---:|")
        for name, values in times.items():
            print(f"| {name} | {pct(values, 50) * 1000:.2f} ms | {pct(values, 90) * 1000:.2f} ms | {pct(values, 99) * 1000:.2f} ms |")
    finally:
        if made is not None:
            made.delete()
        client.close()


if __name__ == "__main__":
    main()
