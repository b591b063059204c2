#!/usr/bin/env python3
"""Instructions per request of an L7 proxy, counted by callgrind (repeatable on a noisy VM).

    bench/l7_profile.py ours|nginx|haproxy [--conns 64] [--requests 20000] [--scaleset PATH]

Starts two my_app backends and the proxy (pinned to core 0, under
`valgrind --tool=callgrind --instr-atstart=no`), opens --conns keep-alive
connections, sends a warm-up round (so pools and buffers exist), switches
instrumentation on with `callgrind_control -i on`, sends exactly --requests
`GET /` requests spread over the connections, switches it off and dumps.
Prints total Ir and Ir per request; the callgrind.out file is left in --out
for `callgrind_annotate`. Standard library only.
"""
import argparse
import asyncio
import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(ROOT, "target", "release")
PORT = 28080
BACKENDS = [("127.0.0.2", 28081), ("127.0.0.3", 28081)]


def wait_port(host, port, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection((host, port), 0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{host}:{port} not listening")


async def drive(port, nconns, warm, total, on, off):
    streams = [await asyncio.open_connection("127.0.0.1", port) for _ in range(nconns)]
    req = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()

    async def one(rw, n, results):
        r, w = rw
        for _ in range(n):
            w.write(req)
            head = await r.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            await r.readexactly(int(m.group(1)))
            results[status] = results.get(status, 0) + 1

    async def run(counts):
        results = {}
        await asyncio.gather(*(one(s, c, results) for s, c in zip(streams, counts)))
        return results

    await run([warm] * nconns)
    on()
    base, extra = divmod(total, nconns)
    t0 = time.time()
    res = await run([base + (1 if i < extra else 0) for i in range(nconns)])
    dt = time.time() - t0
    off()
    for _, w in streams:
        w.close()
    return res, dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("target", choices=["ours", "nginx", "haproxy"])
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--warm", type=int, default=20, help="warm-up requests per connection")
    ap.add_argument("--scaleset", default=os.path.join(REL, "scaleset"))
    ap.add_argument("--out", default=None, help="callgrind.out path")
    ap.add_argument("--no-valgrind", action="store_true", help="run without callgrind")
    ap.add_argument("--perf", action="store_true",
                    help="no callgrind; count syscalls and context switches with perf stat")
    a = ap.parse_args()
    if a.perf:
        a.no_valgrind = True

    tmp = tempfile.mkdtemp(prefix="l7prof-")
    out = a.out or os.path.join(tmp, f"callgrind.out.{a.target}")
    procs = []

    def start(argv, core, name, vg=False):
        if vg and not a.no_valgrind:
            argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                    f"--callgrind-out-file={out}"] + argv
        logf = open(os.path.join(tmp, f"{name}.log"), "wb")
        p = subprocess.Popen(["taskset", "-c", core] + argv, stdout=logf,
                             stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(p)
        return p

    try:
        for host, port in BACKENDS:
            start([os.path.join(REL, "my_app"), "--http", f"{host}:{port}", "--no-socket"],
                  "1", f"my_app-{host}")
        for host, port in BACKENDS:
            wait_port(host, port)
        if a.target == "ours":
            cfg = {
                "name": "prof",
                "rules": [{"name": "l7", "frontend": f"127.0.0.1:{PORT}",
                           "backendPort": BACKENDS[0][1], "layer": "L7",
                           "loadDistribution": "Default", "idleTimeoutInMinutes": 4,
                           "enableTcpReset": False, "probe": "p"}],
                "probes": [{"name": "p", "protocol": "Tcp", "port": BACKENDS[0][1],
                            "intervalInSeconds": 5, "probeThreshold": 1}],
                "backends": [{"id": f"b{i + 1}", "ip": h, "draining": False}
                             for i, (h, _) in enumerate(BACKENDS)],
                "noHealthyBackendsBehavior": "AllProbedDown",
            }
            with open(os.path.join(tmp, "lb.json"), "w") as f:
                json.dump(cfg, f)
            p = start([a.scaleset, "lb-serve", "--config", os.path.join(tmp, "lb.json"),
                       "--admin", os.path.join(tmp, "admin.sock")], "0", "ours", vg=True)
        elif a.target == "nginx":
            conf = os.path.join(tmp, "nginx.conf")
            ups = "\n".join(f"server {h}:{p};" for h, p in BACKENDS)
            with open(conf, "w") as f:
                f.write(f"""
worker_processes 1; daemon off; master_process off;
pid {tmp}/nginx.pid; error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off; keepalive_requests 1000000;
    client_body_temp_path {tmp}/b; proxy_temp_path {tmp}/p; fastcgi_temp_path {tmp}/f;
    uwsgi_temp_path {tmp}/u; scgi_temp_path {tmp}/s;
    upstream backends {{ {ups} keepalive 64; }}
    server {{
        listen 127.0.0.1:{PORT};
        location / {{
            proxy_pass http://backends; proxy_http_version 1.1;
            proxy_set_header Connection ""; proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
}}
""")
            p = start(["nginx", "-c", conf, "-p", tmp], "0", "nginx", vg=True)
        else:
            conf = os.path.join(tmp, "haproxy.cfg")
            srv = "\n".join(f"    server b{i} {h}:{p}" for i, (h, p) in enumerate(BACKENDS))
            with open(conf, "w") as f:
                f.write(f"""
global
    nbthread 1
    maxconn 4096
defaults
    timeout connect 5s
    timeout client 240s
    timeout server 240s
frontend l7
    mode http
    bind 127.0.0.1:{PORT}
    option forwardfor
    default_backend l7b
backend l7b
    mode http
    balance roundrobin
    http-reuse always
{srv}
""")
            p = start(["haproxy", "-db", "-f", conf], "0", "haproxy", vg=True)
        wait_port("127.0.0.1", PORT, timeout=120)
        if a.target == "ours":
            time.sleep(1.5)  # first TCP probes mark both backends up

        perf = {}

        def ctl(state):
            def f():
                if a.perf and state == "on":
                    perf["out"] = os.path.join(tmp, "perf.txt")
                    perf["p"] = subprocess.Popen(
                        ["perf", "stat", "-x,", "-o", perf["out"], "-e",
                         "raw_syscalls:sys_enter,context-switches,task-clock", "-p", str(p.pid)])
                    time.sleep(0.5)  # perf attaches
                elif a.perf:
                    perf["p"].send_signal(signal.SIGINT)
                    perf["p"].wait(10)
                elif not a.no_valgrind:
                    subprocess.run(["callgrind_control", "-i", state, str(p.pid)], check=True,
                                   stdout=subprocess.DEVNULL)
            return f

        res, dt = asyncio.run(drive(PORT, a.conns, a.warm, a.requests, ctl("on"), ctl("off")))
        n = sum(res.values())
        print(f"{a.target}: {n} requests {res} in {dt:.1f}s over {a.conns} conns", flush=True)
        if a.perf:
            with open(perf["out"]) as f:
                for line in f:
                    parts = line.strip().split(",")
                    if len(parts) > 3 and parts[0] and parts[0][0].isdigit():
                        v = float(parts[0]) / n
                        if parts[2] == "task-clock":  # msec
                            print(f"{a.target}: task-clock {v * 1000:.1f} µs per request (noisy)")
                        else:
                            print(f"{a.target}: {parts[2]} {v:.2f} per request")
        if a.no_valgrind:
            return
        os.kill(p.pid, signal.SIGTERM if a.target != "nginx" else signal.SIGQUIT)
        p.wait(60)
        files = sorted(glob.glob(out + "*"))
        total = 0
        for fn in files:
            with open(fn) as f:
                # "totals:" sums every cost line; "summary:" can be 0 when
                # instrumentation was toggled at run time.
                total += max((int(line.split()[1]) for line in f
                              if line.startswith(("summary:", "totals:"))), default=0)
        print(f"{a.target}: Ir {total:,} = {total / n:,.0f} Ir/request ({', '.join(files)})")
    finally:
        for q in procs:
            if q.poll() is None:
                try:
                    os.killpg(q.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                q.wait()


if __name__ == "__main__":
    main()
