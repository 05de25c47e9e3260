#!/usr/bin/env python3
"""The SDK beside the OpenSSH client, through the same gateway, in one run.

    WARREN_URL=… WARREN_API_KEY=… python sdk/python/bench.py [--image I] [--runs 200]
        [--sandboxes 10] [--concurrent 200] [--file-mib 256] [--creates 5]

Prints a Markdown table: ``sb.run("true")`` on a held connection against a fresh
``ssh <id>@gw true``; many runs at once over several sandboxes; files.write/read
against scp; create → first run. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
import time
import warnings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore")
    import warren
    from warren.aio import AsyncWarren


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def ssh_base(sb: warren.Sandbox, known_hosts: str) -> list[str]:
    info = sb.info()
    return [
        "ssh", "-p", str(info.ssh_port),
        "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes",
        "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
        # The token after `#` in the user name: no password prompt. As an option,
        # since scp refuses such a user name in a remote path.
        "-o", f"User={sb.id}#{sb.token}",
        info.ssh_host,
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--image", default=os.environ.get("WARREN_TEST_IMAGE", "warren-busybox:latest"))
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--ssh-runs", type=int, default=20)
    ap.add_argument("--sandboxes", type=int, default=10)
    ap.add_argument("--concurrent", type=int, default=200)
    ap.add_argument("--file-mib", type=int, default=256)
    ap.add_argument("--creates", type=int, default=5)
    args = ap.parse_args()
    rows: list[tuple[str, str, str]] = []

    client = warren.Warren()
    known = tempfile.NamedTemporaryFile("w", suffix=".known_hosts", delete=False)
    info_host = None
    with client.create(args.image) as sb:
        info = sb.info()
        info_host = f"[{info.ssh_host}]:{info.ssh_port}"
        for key in client.host_keys():
            known.write(f"{info_host} {key}\n")
        known.close()

        sb.run("true")  # connect
        held = []
        for _ in range(args.runs):
            t = time.perf_counter()
            sb.run("true")
            held.append(time.perf_counter() - t)
        fresh = []
        for _ in range(args.ssh_runs):
            t = time.perf_counter()
            subprocess.run(ssh_base(sb, known.name) + ["true"], check=True)
            fresh.append(time.perf_counter() - t)
        rows.append((f'`sb.run("true")`, held connection, p50 / p99 of {args.runs}',
                     f"{ms(pct(held, 50))} / {ms(pct(held, 99))}",
                     f"fresh `ssh id@gw true`, p50 of {args.ssh_runs}: {ms(pct(fresh, 50))}"))

        if args.file_mib:
            data = os.urandom(args.file_mib << 20)
            mib = args.file_mib
            t = time.perf_counter()
            sb.files.write("/tmp/bench.bin", data)
            w = time.perf_counter() - t
            t = time.perf_counter()
            back = sb.files.read("/tmp/bench.bin")
            r = time.perf_counter() - t
            assert back == data
            with tempfile.TemporaryDirectory() as d:
                local = os.path.join(d, "f")
                with open(local, "wb") as f:
                    f.write(data)
                base = ssh_base(sb, known.name)
                scp = ["scp", "-q", "-P", base[2]] + base[3:-1]
                target = base[-1]
                t = time.perf_counter()
                subprocess.run(scp + [local, f"{target}:/tmp/bench-scp.bin"], check=True)
                sw = time.perf_counter() - t
                t = time.perf_counter()
                subprocess.run(scp + [f"{target}:/tmp/bench-scp.bin", local + ".back"], check=True)
                sr = time.perf_counter() - t
            rows.append((f"files.write of {mib} MiB", f"{mib / w:.0f} MiB/s", f"scp upload {mib / sw:.0f} MiB/s ({sw / w:.2f}×)"))
            rows.append((f"files.read of {mib} MiB", f"{mib / r:.0f} MiB/s", f"scp download {mib / sr:.0f} MiB/s ({sr / r:.2f}×)"))
            sb.run("rm -f /tmp/bench.bin /tmp/bench-scp.bin")

    async def many() -> tuple[int, float]:
        async with AsyncWarren() as c:
            boxes = await asyncio.gather(*(c.create(args.image, memory_mb=128) for _ in range(args.sandboxes)))
            try:
                await asyncio.gather(*(b.run("true") for b in boxes))
                t = time.perf_counter()
                results = await asyncio.gather(*(boxes[i % len(boxes)].run(f"echo {i}") for i in range(args.concurrent)))
                took = time.perf_counter() - t
                ok = sum(1 for i, r in enumerate(results) if r.stdout == f"{i}\n")
            finally:
                await asyncio.gather(*(b.__aexit__(None, None, None) for b in boxes))
            return ok, took

    if args.sandboxes:
        ok, took = asyncio.run(many())
        rows.append((f"{args.concurrent} `run` at once over {args.sandboxes} sandboxes",
                     f"{ok}/{args.concurrent} ok, {args.concurrent / took:.0f} runs/s", ""))

    creates = []
    for _ in range(args.creates):
        t = time.perf_counter()
        with client.create(args.image, memory_mb=128) as sb:
            sb.run("true", check=True)
            creates.append(time.perf_counter() - t)
    if creates:
        rows.append((f"create → first `run` returns, p50 of {len(creates)}", ms(statistics.median(creates)), ""))
    client.close()
    os.unlink(known.name)

    print("| measure | SDK | beside it |\n|---|---:|---|")
    for measure, value, other in rows:
        print(f"| {measure} | {value} | {other} |")


if __name__ == "__main__":
    main()
