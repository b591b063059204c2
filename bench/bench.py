#!/usr/bin/env python3
"""scaleset benchmark suite: orchestration and reporting (started by bench/run).

Every comparison runs its contenders in the same run, with the same core
placement (proxy / server stack on core 0, load generator and backends on
core 1), the same warm-up and duration, repeated and interleaved
(run 1: A B C, run 2: A B C, ...); medians are reported with ratios.

Only the standard library is used here; Flask + uWSGI live in bench/.venv.
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
REL = os.path.join(ROOT, "target", "release")
SCALESET = os.path.join(REL, "scaleset")
MY_APP = os.path.join(REL, "my_app")
VENV = os.path.join(BENCH, ".venv")
RESULTS = os.path.join(BENCH, "results")

PROXY_CORE = "0"
CLIENT_CORE = "1"
CLK_TCK = os.sysconf("SC_CLK_TCK")

PROCS = []  # every process we started, stopped at exit


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes


def start(name, argv, core, tmp, env=None):
    """Start argv pinned to `core`, logs to tmp/<name>.log, in its own process group."""
    logf = open(os.path.join(tmp, f"{name}.log"), "wb")
    full = ["taskset", "-c", core] + argv
    p = subprocess.Popen(
        full, stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    p.bench_name = name
    PROCS.append(p)
    return p


def stop(p, sig=signal.SIGTERM, timeout=10):
    if p.poll() is not None:
        return
    try:
        os.killpg(p.pid, sig)
    except ProcessLookupError:
        return
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()


def stop_all():
    for p in reversed(PROCS):
        stop(p)
    PROCS.clear()


def wait_port(host, port, timeout=15.0, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.bench_name} exited with {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{host}:{port} not listening after {timeout}s")


def wait_unix(path, timeout=15.0, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.bench_name} exited with {proc.returncode}")
        if os.path.exists(path):
            try:
                s = socket.socket(socket.AF_UNIX)
                s.connect(path)
                s.close()
                return
            except OSError:
                pass
        time.sleep(0.05)
    raise RuntimeError(f"{path} not accepting after {timeout}s")


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode()


def admin_status(sock):
    out = subprocess.run(
        ["curl", "-s", "--max-time", "2", "--unix-socket", sock, "http://x/status"],
        capture_output=True, text=True,
    ).stdout
    return json.loads(out) if out else None


def wait_lb_healthy(sock, n, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            st = admin_status(sock)
            if st and sum(1 for b in st["backends"] if b["healthy"]) >= n:
                return
        except (ValueError, KeyError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"LB behind {sock}: fewer than {n} healthy backends after {timeout}s")


def tree_pids(root):
    """root and all its descendants (nginx master + workers, uWSGI master + workers)."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
        except OSError:
            continue
        ppid = int(st[st.rfind(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_ticks(pids):
    t = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                st = f.read()
            fields = st[st.rfind(")") + 2:].split()
            t += int(fields[11]) + int(fields[12])  # utime + stime
        except OSError:
            pass
    return t


def rss_kib(pids):
    t = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        t += int(line.split()[1])
        except OSError:
            pass
    return t


def real_pid(p):
    """The pid under `taskset` (taskset execs, so it is the same pid)."""
    return p.pid


# --------------------------------------------------------------------------- wrk

UNIT = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def parse_latency(s):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", s)
    return float(m.group(1)) * UNIT[m.group(2)]


def wrk(url, duration, conns, threads=1):
    out = subprocess.run(
        ["taskset", "-c", CLIENT_CORE, "wrk", f"-t{threads}", f"-c{conns}",
         f"-d{duration}s", "--latency", url],
        capture_output=True, text=True,
    ).stdout
    r = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    r["rps"] = float(m.group(1)) if m else 0.0
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        r[f"p{pct}_ms"] = parse_latency(m.group(1)) if m else None
    m = re.search(r"(\d+) requests in", out)
    r["requests"] = int(m.group(1)) if m else 0
    errs = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errs += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errs += int(m.group(1))
    r["errors"] = errs
    if not m and r["rps"] == 0.0:
        r["raw"] = out[-500:]
    return r


def measure_http(url, procs, cfg, conns):
    """One measured wrk run; proxy CPU (% of one core) and RSS over `procs` trees."""
    trees0 = {p.bench_name: tree_pids(real_pid(p)) for p in procs}
    t0, c0 = time.time(), {n: cpu_ticks(t) for n, t in trees0.items()}
    r = wrk(url, cfg.duration, conns)
    trees1 = {p.bench_name: tree_pids(real_pid(p)) for p in procs}
    t1, c1 = time.time(), {n: cpu_ticks(t) for n, t in trees1.items()}
    # a worker that exited in between would count negative; clamp per tree
    by = {n: max(0, c1[n] - c0.get(n, 0)) / CLK_TCK for n in c1}
    secs = sum(by.values())
    r["cpu_pct"] = 100.0 * secs / (t1 - t0)
    r["cpu_pct_by"] = {n: 100.0 * v / (t1 - t0) for n, v in by.items()}
    r["cpu_us_per_req"] = 1e6 * secs / r["requests"] if r["requests"] and procs else None
    r["rss_mib"] = sum(rss_kib(t) for t in trees1.values()) / 1024.0
    return r


def fmt_by(by):
    return "(" + ", ".join(f"{n} {v:.0f}%" for n, v in by.items()) + ")" if len(by) > 1 else ""


def median_of(runs, key):
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def summarize(runs, keys):
    s = {k: median_of(runs, k) for k in keys}
    s["errors"] = sum(r.get("errors", 0) for r in runs)
    s["runs"] = runs
    return s


def compare_http(contenders, cfg, conns):
    """contenders: list of (name, url, [procs]). Interleaved warm-up + runs."""
    for name, url, procs in contenders:
        log(f"warm-up {name} ({cfg.warmup}s)")
        wrk(url, cfg.warmup, conns)
    runs = {name: [] for name, _, _ in contenders}
    for i in range(cfg.runs):
        for name, url, procs in contenders:
            r = measure_http(url, procs, cfg, conns)
            log(f"run {i + 1}/{cfg.runs} {name}: {r['rps']:.0f} req/s p50 {r['p50_ms']} ms "
                f"p99 {r['p99_ms']} ms cpu {r['cpu_pct']:.0f}% {fmt_by(r['cpu_pct_by'])} rss {r['rss_mib']:.1f} MiB err {r['errors']}")
            runs[name].append(r)
    return {name: summarize(rs, ["rps", "p50_ms", "p99_ms", "cpu_pct", "cpu_us_per_req", "rss_mib"])
            for name, rs in runs.items()}


# --------------------------------------------------------------------------- configs


def lb_config(name, rules, backends, probe_port):
    return {
        "name": name,
        "rules": [
            {"name": rn, "frontend": fe, "backendPort": bp, "layer": layer,
             "loadDistribution": "Default", "idleTimeoutInMinutes": 4,
             "enableTcpReset": False, "probe": "p"}
            for rn, fe, bp, layer in rules
        ],
        "probes": [{"name": "p", "protocol": "Tcp", "port": probe_port,
                    "intervalInSeconds": 5, "probeThreshold": 1}],
        "backends": [{"id": f"b{i + 1}", "ip": ip, "draining": False}
                     for i, ip in enumerate(backends)],
        "noHealthyBackendsBehavior": "AllProbedDown",
    }


NGINX_MAIN = """
worker_processes 1;
daemon off;
master_process on;
pid {tmp}/nginx-{name}.pid;
error_log {tmp}/nginx-{name}-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/nginx-{name}-body;
    proxy_temp_path {tmp}/nginx-{name}-proxy;
    fastcgi_temp_path {tmp}/nginx-{name}-fastcgi;
    uwsgi_temp_path {tmp}/nginx-{name}-uwsgi;
    scgi_temp_path {tmp}/nginx-{name}-scgi;
    keepalive_requests 1000000;
{body}
}}
"""


def nginx_conf(tmp, name, body):
    path = os.path.join(tmp, f"nginx-{name}.conf")
    with open(path, "w") as f:
        f.write(NGINX_MAIN.format(tmp=tmp, name=name, body=body))
    return path


def start_nginx(tmp, name, body):
    conf = nginx_conf(tmp, name, body)
    t = subprocess.run(["nginx", "-t", "-c", conf, "-p", tmp], capture_output=True, text=True)
    if t.returncode != 0:
        raise RuntimeError(f"nginx config {name} invalid: {t.stderr}")
    return start(f"nginx-{name}", ["nginx", "-c", conf, "-p", tmp], PROXY_CORE, tmp)


HAPROXY_CONF = """
global
    nbthread 1
    maxconn 4096
    log /dev/null local0 emerg
defaults
    timeout connect 5s
    timeout client 240s
    timeout server 240s
    maxconn 4096
frontend l7
    mode http
    bind 127.0.0.1:{l7}
    option forwardfor
    default_backend l7b
backend l7b
    mode http
    balance roundrobin
    http-reuse always
    server b1 127.0.0.2:18081
    server b2 127.0.0.3:18081
frontend l4
    mode tcp
    bind 127.0.0.1:{l4}
    default_backend l4b
backend l4b
    mode tcp
    balance roundrobin
    server b1 127.0.0.2:18081
    server b2 127.0.0.3:18081
frontend bulk
    mode tcp
    bind 127.0.0.1:{bulk}
    default_backend bulkb
backend bulkb
    mode tcp
    server b1 127.0.0.4:5201
"""

# frontend ports
OURS_L7, OURS_L4, OURS_BULK = 18080, 18082, 18083
NGINX_L7 = 18090
HAP_L7, HAP_L4, HAP_BULK = 18100, 18102, 18103
STACK_RUST, STACK_SEED = 18110, 18111


# --------------------------------------------------------------------------- suites


def start_backends(tmp):
    a = start("my_app-1", [MY_APP, "--http", "127.0.0.2:18081", "--no-socket"], CLIENT_CORE, tmp)
    b = start("my_app-2", [MY_APP, "--http", "127.0.0.3:18081", "--no-socket"], CLIENT_CORE, tmp)
    wait_port("127.0.0.2", 18081, proc=a)
    wait_port("127.0.0.3", 18081, proc=b)
    return [a, b]


def start_proxies(tmp):
    cfg = lb_config("bench", [("l7", f"127.0.0.1:{OURS_L7}", 18081, "L7"),
                               ("l4", f"127.0.0.1:{OURS_L4}", 18081, "L4")],
                    ["127.0.0.2", "127.0.0.3"], 18081)
    with open(os.path.join(tmp, "lb.json"), "w") as f:
        json.dump(cfg, f)
    admin = os.path.join(tmp, "lb-admin.sock")
    ours = start("ours", [SCALESET, "lb-serve", "--config", os.path.join(tmp, "lb.json"),
                          "--admin", admin], PROXY_CORE, tmp)
    bcfg = lb_config("bulk", [("bulk", f"127.0.0.1:{OURS_BULK}", 5201, "L4")],
                     ["127.0.0.4"], 5201)
    with open(os.path.join(tmp, "lb-bulk.json"), "w") as f:
        json.dump(bcfg, f)
    badmin = os.path.join(tmp, "lb-bulk-admin.sock")
    ours_bulk = start("ours-bulk", [SCALESET, "lb-serve", "--config",
                                    os.path.join(tmp, "lb-bulk.json"), "--admin", badmin],
                      PROXY_CORE, tmp)
    ngx = start_nginx(tmp, "l7", f"""
    upstream backends {{
        server 127.0.0.2:18081;
        server 127.0.0.3:18081;
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{NGINX_L7};
        location / {{
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}""")
    hcfg = os.path.join(tmp, "haproxy.cfg")
    with open(hcfg, "w") as f:
        f.write(HAPROXY_CONF.format(l7=HAP_L7, l4=HAP_L4, bulk=HAP_BULK))
    hap = start("haproxy", ["haproxy", "-db", "-f", hcfg], PROXY_CORE, tmp)
    wait_port("127.0.0.1", OURS_L7, proc=ours)
    wait_port("127.0.0.1", NGINX_L7, proc=ngx)
    wait_port("127.0.0.1", HAP_L7, proc=hap)
    wait_lb_healthy(admin, 2)
    return {"ours": ours, "ours_bulk": ours_bulk, "bulk_admin": badmin,
            "nginx": ngx, "haproxy": hap, "admin": admin}


def check_body(url, needle="You are currently on the Home page"):
    status, body = http_get(url)
    if status != 200 or needle not in body:
        raise RuntimeError(f"{url}: unexpected response {status}: {body[:200]}")


def suite_l7(cfg, px):
    for port in (OURS_L7, NGINX_L7, HAP_L7):
        check_body(f"http://127.0.0.1:{port}/")
    return compare_http([
        ("ours", f"http://127.0.0.1:{OURS_L7}/", [px["ours"]]),
        ("nginx", f"http://127.0.0.1:{NGINX_L7}/", [px["nginx"]]),
        ("haproxy", f"http://127.0.0.1:{HAP_L7}/", [px["haproxy"]]),
    ], cfg, cfg.conns)


def suite_l4_small(cfg, px):
    for port in (OURS_L4, HAP_L4):
        check_body(f"http://127.0.0.1:{port}/")
    return compare_http([
        ("ours", f"http://127.0.0.1:{OURS_L4}/", [px["ours"]]),
        ("haproxy", f"http://127.0.0.1:{HAP_L4}/", [px["haproxy"]]),
        ("direct", "http://127.0.0.2:18081/", []),
    ], cfg, cfg.conns)


def iperf(host, port, nbytes, procs):
    pids = [q for p in procs for q in tree_pids(real_pid(p))]
    t0, c0 = time.time(), cpu_ticks(pids)
    out = subprocess.run(
        ["taskset", "-c", CLIENT_CORE, "iperf3", "-c", host, "-p", str(port),
         "-n", str(nbytes), "-J"], capture_output=True, text=True)
    t1, c1 = time.time(), cpu_ticks(pids)
    try:
        j = json.loads(out.stdout)
        end = j["end"]
        bps = end["sum_received"]["bits_per_second"]
        secs = end["sum_received"]["seconds"]
    except (ValueError, KeyError) as e:
        raise RuntimeError(f"iperf3 via {host}:{port} failed: {out.stdout[-400:]} {out.stderr[-400:]}") from e
    return {"gbit_s": bps / 1e9, "seconds": secs,
            "cpu_pct": 100.0 * (c1 - c0) / CLK_TCK / (t1 - t0),
            "rss_mib": rss_kib(pids) / 1024.0}


def suite_l4_bulk(cfg, px, tmp):
    srv = start("iperf3-server", ["iperf3", "-s", "-B", "127.0.0.4", "-p", "5201"], CLIENT_CORE, tmp)
    wait_port("127.0.0.4", 5201, proc=srv)
    wait_lb_healthy(px["bulk_admin"], 1)
    time.sleep(0.3)
    contenders = [("ours", "127.0.0.1", OURS_BULK, [px["ours_bulk"]]),
                  ("haproxy", "127.0.0.1", HAP_BULK, [px["haproxy"]]),
                  ("direct", "127.0.0.4", 5201, [])]
    nbytes = cfg.bulk_bytes
    for name, host, port, procs in contenders:
        iperf(host, port, min(nbytes, 64 << 20), procs)  # warm-up
    runs = {n: [] for n, *_ in contenders}
    for i in range(cfg.runs):
        for name, host, port, procs in contenders:
            r = iperf(host, port, nbytes, procs)
            log(f"bulk run {i + 1}/{cfg.runs} {name}: {r['gbit_s']:.2f} Gbit/s "
                f"({nbytes >> 20} MiB in {r['seconds']:.2f}s) cpu {r['cpu_pct']:.0f}%")
            runs[name].append(r)
            time.sleep(0.2)
    stop(srv)
    return {n: summarize(rs, ["gbit_s", "seconds", "cpu_pct", "rss_mib"]) | {"bytes": nbytes}
            for n, rs in runs.items()}


def suite_app(cfg, tmp):
    sock_rust = os.path.join(tmp, "my_app.sock")
    sock_seed = os.path.join(tmp, "uwsgi.sock")
    app = start("my_app-sock", [MY_APP, "--socket", sock_rust], PROXY_CORE, tmp)
    uwsgi = start("uwsgi", [
        os.path.join(VENV, "bin", "uwsgi"), "--master", "--processes", "10",
        "--socket", sock_seed, "--chmod-socket=666", "--chdir", os.path.join(BENCH, "seed_app"),
        "--wsgi-file", os.path.join(BENCH, "seed_app", "app.py"), "--callable", "app",
        "--disable-logging", "--die-on-term", "--need-app",
    ], PROXY_CORE, tmp)
    wait_unix(sock_rust, proc=app)
    wait_unix(sock_seed, timeout=30, proc=uwsgi)
    ngx = start_nginx(tmp, "app", f"""
    upstream my_app {{
        server unix:{sock_rust};
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{STACK_RUST};
        location / {{
            proxy_pass http://my_app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
    server {{
        listen 127.0.0.1:{STACK_SEED};
        location / {{
            include /etc/nginx/uwsgi_params;
            uwsgi_pass unix:{sock_seed};
        }}
    }}""")
    wait_port("127.0.0.1", STACK_RUST, proc=ngx)
    wait_port("127.0.0.1", STACK_SEED, proc=ngx)
    check_body(f"http://127.0.0.1:{STACK_RUST}/")
    check_body(f"http://127.0.0.1:{STACK_SEED}/")
    # CPU/RSS of the whole server-side stack (nginx + app server).
    res = compare_http([
        ("rust", f"http://127.0.0.1:{STACK_RUST}/", [ngx, app]),
        ("seed", f"http://127.0.0.1:{STACK_SEED}/", [ngx, uwsgi]),
    ], cfg, cfg.conns)
    for p in (ngx, uwsgi, app):
        stop(p, signal.SIGINT if p is uwsgi else signal.SIGTERM)
    return res


# --------------------------------------------------------------------------- deploy / scale

import deploy  # noqa: E402  (bench/deploy.py)
import autoscale  # noqa: E402  (bench/autoscale.py)


# --------------------------------------------------------------------------- report


def ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def paired(suite, a, b, key):
    """Per-run ratios a/b (runs are interleaved, so run i of a and b saw similar noise)."""
    ra, rb = suite[a].get("runs", []), suite[b].get("runs", [])
    rs = sorted(x[key] / y[key] for x, y in zip(ra, rb) if x.get(key) and y.get(key))
    if not rs:
        return ""
    return f" (per-run {rs[0]:.2f}-{rs[-1]:.2f})" if len(rs) > 1 else ""


def goals(res):
    g = []
    l7 = res.get("l7")
    if l7:
        tr = ratio(l7["ours"]["rps"], l7["nginx"]["rps"])
        pr = ratio(l7["ours"]["p99_ms"], l7["nginx"]["p99_ms"])
        g.append({"row": "L7 throughput vs nginx", "goal": ">= 1.1x", "value": tr,
                  "text": f"{tr:.2f}x" + paired(l7, "ours", "nginx", "rps") if tr else None,
                  "met": tr is not None and tr >= 1.1})
        g.append({"row": "L7 p99 vs nginx", "goal": "<= 1.0x", "value": pr,
                  "text": f"{pr:.2f}x" + paired(l7, "ours", "nginx", "p99_ms") if pr else None,
                  "met": pr is not None and pr <= 1.0})
    l4 = res.get("l4_small")
    if l4:
        tr = ratio(l4["ours"]["rps"], l4["haproxy"]["rps"])
        g.append({"row": "L4 small requests vs HAProxy", "goal": ">= 1.0x", "value": tr,
                  "text": f"{tr:.2f}x" + paired(l4, "ours", "haproxy", "rps") if tr else None,
                  "met": tr is not None and tr >= 1.0})
    bulk = res.get("l4_bulk")
    if bulk:
        tr = ratio(bulk["ours"]["gbit_s"], bulk["haproxy"]["gbit_s"])
        g.append({"row": "L4 bulk transfer vs HAProxy", "goal": ">= 1.0x", "value": tr,
                  "text": f"{tr:.2f}x" + paired(bulk, "ours", "haproxy", "gbit_s") if tr else None,
                  "met": tr is not None and tr >= 1.0})
    app = res.get("app")
    if app:
        tr = ratio(app["rust"]["rps"], app["seed"]["rps"])
        pr = ratio(app["rust"]["p99_ms"], app["seed"]["p99_ms"])
        g.append({"row": "App stack throughput vs seed", "goal": ">= 20x", "value": tr,
                  "text": f"{tr:.2f}x" + paired(app, "rust", "seed", "rps") if tr else None,
                  "met": tr is not None and tr >= 20})
        g.append({"row": "App stack p99 vs seed", "goal": "<= 0.1x", "value": pr,
                  "text": f"{pr:.2f}x" + paired(app, "rust", "seed", "p99_ms") if pr else None,
                  "met": pr is not None and pr <= 0.1})
    for key in ("deploy", "autoscale"):
        for row in res.get(key, {}).get("rows", []):
            g.append(row)
    return g


def fmt(v, nd=1):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    return str(v)


def table(res):
    lines = []
    hdr = f"{'suite':<14}{'contender':<10}{'req/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'CPU %':>7}{'µs/req':>8}{'RSS MiB':>9}{'err':>5}{'ratio':>8}{'eff.':>7}"
    for key, title, base in (("l7", "L7 proxy", "nginx"), ("l4_small", "L4 small", "haproxy"),
                             ("app", "App stack", "seed")):
        if key not in res:
            continue
        lines.append(hdr if not lines else "")
        if lines[-1] == "":
            lines.append(hdr)
        lines.append("-" * len(hdr))
        for name, s in res[key].items():
            lines.append(f"{title:<14}{name:<10}{fmt(s['rps'], 0):>11}{fmt(s['p50_ms'], 2):>9}"
                         f"{fmt(s['p99_ms'], 2):>9}{fmt(s['cpu_pct'], 0):>7}{fmt(s['cpu_us_per_req'], 1):>8}{fmt(s['rss_mib'], 1):>9}"
                         f"{s['errors']:>5}{fmt(ratio(s['rps'], res[key][base]['rps']), 2):>7}x"
                         f"{fmt(ratio(res[key][base]['cpu_us_per_req'], s['cpu_us_per_req']), 2):>6}x")
    if "l4_bulk" in res:
        lines.append("")
        h2 = f"{'suite':<14}{'contender':<10}{'Gbit/s':>11}{'seconds':>9}{'CPU %':>7}{'ratio':>8}"
        lines.append(h2)
        lines.append("-" * len(h2))
        for name, s in res["l4_bulk"].items():
            lines.append(f"{'L4 bulk ' + str(s['bytes'] >> 20) + 'M':<14}{name:<10}{fmt(s['gbit_s'], 2):>11}"
                         f"{fmt(s['seconds'], 2):>9}{fmt(s['cpu_pct'], 0):>7}"
                         f"{fmt(ratio(s['gbit_s'], res['l4_bulk']['haproxy']['gbit_s']), 2):>7}x")
    if "deploy" in res:
        lines.append("")
        lines.append("Deploy & scale")
        lines.append("-" * 60)
        for m in res["deploy"].get("measurements", []):
            lines.append(f"  {m['name']:<44} {m['text']}")
    if "autoscale" in res:
        lines.append("")
        lines.append("Autoscale")
        lines.append("-" * 60)
        for m in res["autoscale"].get("measurements", []):
            lines.append(f"  {m['name']:<44} {m['text']}")
    lines.append("")
    lines.append("ratio = req/s vs the baseline; eff. = CPU efficiency vs the baseline "
                 "(baseline CPU µs per request / this one's); medians of "
                 f"{res['meta']['runs']} interleaved runs")
    lines.append("")
    lines.append("Goals")
    lines.append("-" * 60)
    for g in res["goals"]:
        if g.get("met") is None:
            verdict = "NOT MEASURED" if g.get("value") is None else "(no goal)"
        else:
            verdict = "MET" if g["met"] else "MISSED"
        val = g.get("text") or (f"{g['value']:.2f}x" if g.get("value") is not None else "-")
        lines.append(f"  {g['row']:<36} goal {g['goal']:<10} got {val:<28} {verdict}")
    return "\n".join(lines)


def esc(t):
    return str(t).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def svg(res, path):
    """Horizontal bar chart: one group per suite, bars normalized to the baseline."""
    groups = []
    if "l7" in res:
        groups.append(("L7 proxy req/s (vs nginx)", [(n, s["rps"]) for n, s in res["l7"].items()], "nginx"))
    if "l4_small" in res:
        groups.append(("L4 small req/s (vs HAProxy)", [(n, s["rps"]) for n, s in res["l4_small"].items()], "haproxy"))
    if "l4_bulk" in res:
        groups.append(("L4 bulk Gbit/s (vs HAProxy)", [(n, s["gbit_s"]) for n, s in res["l4_bulk"].items()], "haproxy"))
    if "app" in res:
        groups.append(("App stack req/s (vs seed)", [(n, s["rps"]) for n, s in res["app"].items()], "seed"))
    colors = {"ours": "#2b7bb9", "rust": "#2b7bb9", "nginx": "#3c9a3c", "haproxy": "#d9822b",
              "direct": "#888888", "seed": "#b03a3a"}
    W, left, barh, gap = 900, 110, 20, 6
    y = 50
    parts = []
    for title, bars, base in groups:
        parts.append(f'<text x="10" y="{y}" font-weight="bold">{title}</text>')
        y += 10
        mx = max((v or 0) for _, v in bars) or 1
        basev = dict(bars).get(base) or 0
        for name, v in bars:
            w = (W - left - 160) * (v or 0) / mx
            r = f" ({v / basev:.2f}x)" if basev and v else ""
            unit = "Gbit/s" if "Gbit" in title else "req/s"
            parts.append(f'<text x="{left - 8}" y="{y + 15}" text-anchor="end">{name}</text>')
            parts.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{barh}" fill="{colors.get(name, "#555")}"/>')
            parts.append(f'<text x="{left + w + 6:.1f}" y="{y + 15}">{fmt(v, 2 if unit == "Gbit/s" else 0)} {unit}{r}</text>')
            y += barh + gap
        y += 24
    parts.append(f'<text x="10" y="{y}" font-weight="bold">Goals</text>')
    y += 20
    for g in res.get("goals", []):
        verdict = (("NOT MEASURED" if g.get("value") is None else "(no goal)") if g.get("met") is None
                   else ("MET" if g["met"] else "MISSED"))
        col = {"MET": "#2a8a2a", "MISSED": "#b03a3a"}.get(verdict, "#777")
        val = g.get("text") or (f"{g['value']:.2f}x" if g.get("value") is not None else "-")
        val = (val[:70] + "…") if len(val) > 70 else val
        parts.append(f'<text x="10" y="{y}">{esc(g["row"])} ({esc(g["goal"])}): {esc(val)}</text>'
                     f'<text x="{W - 10}" y="{y}" text-anchor="end" fill="{col}" font-weight="bold">{verdict}</text>')
        y += 18
    y += 10
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{y}" '
            f'font-family="sans-serif" font-size="13">'
            f'<rect width="100%" height="100%" fill="white"/>'
            f'<text x="10" y="24" font-size="16" font-weight="bold">scaleset benchmarks '
            f'({res["meta"]["mode"]}, medians of {res["meta"]["runs"]} runs, {res["meta"]["date"]})</text>')
    with open(path, "w") as f:
        f.write(head + "".join(parts) + "</svg>\n")


def machine():
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    ver = lambda argv: subprocess.run(argv, capture_output=True, text=True)
    nginx_v = ver(["nginx", "-v"]).stderr.strip()
    hap_v = ver(["haproxy", "-v"]).stdout.splitlines()[0] if shutil.which("haproxy") else "?"
    wrk_v = (ver(["wrk", "-v"]).stdout or ver(["wrk", "-v"]).stderr).splitlines()[0]
    return {"nproc": os.cpu_count(), "cpu": model, "kernel": os.uname().release,
            "nginx": nginx_v, "haproxy": hap_v, "wrk": wrk_v.strip(),
            "loadavg": open("/proc/loadavg").read().split()[:3]}


# --------------------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="short smoke run (1 x 3 s, 1 s warm-up; full: 5 x 10 s, 3 s warm-up)")
    ap.add_argument("--only", default="l7,l4,bulk,app,deploy,autoscale",
                    help="comma-separated subset of l7,l4,bulk,app,deploy,autoscale,scale")
    ap.add_argument("--runs", type=int)
    ap.add_argument("--duration", type=int)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--scale", type=int, default=0,
                    help="also run the N-instance scale row (e.g. 100); off by default")
    ap.add_argument("--from-json", metavar="PATH",
                    help="measure nothing: re-render the table and chart from a results JSON")
    cfg = ap.parse_args()
    if cfg.from_json:
        with open(cfg.from_json) as f:
            res = json.load(f)
        res["goals"] = goals(res)
        print(table(res))
        svg(res, os.path.join(RESULTS, "latest.svg"))
        return
    cfg.runs = cfg.runs or (1 if cfg.quick else 5)
    cfg.duration = cfg.duration or (3 if cfg.quick else 10)
    cfg.warmup = 1 if cfg.quick else 3
    cfg.bulk_bytes = (256 << 20) if cfg.quick else (1 << 30)
    only = set(cfg.only.split(","))

    os.makedirs(RESULTS, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="scaleset-bench-")
    os.chmod(tmp, 0o755)  # nginx workers run as nobody and must reach the unix sockets
    res = {"meta": {"mode": "quick" if cfg.quick else "full", "runs": cfg.runs,
                    "duration_s": cfg.duration, "warmup_s": cfg.warmup, "conns": cfg.conns,
                    "wrk_threads": 1, "pinning": {"proxy_or_server_stack": PROXY_CORE,
                                                  "wrk_backends_iperf": CLIENT_CORE},
                    "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                    "commit": subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                                             capture_output=True, text=True).stdout.strip(),
                    "stale_build": bool(os.environ.get("BENCH_STALE_BUILD")),
                    "binary_mtime": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.path.getmtime(SCALESET))),
                    "machine": machine()}}

    def on_signal(sig, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_signal)
    try:
        if only & {"l7", "l4", "bulk"}:
            log("starting backends and proxies (tmp " + tmp + ")")
            start_backends(tmp)
            px = start_proxies(tmp)
            if "l7" in only:
                res["l7"] = suite_l7(cfg, px)
            if "l4" in only:
                res["l4_small"] = suite_l4_small(cfg, px)
            if "bulk" in only:
                res["l4_bulk"] = suite_l4_bulk(cfg, px, tmp)
            stop_all()
        if "app" in only:
            res["app"] = suite_app(cfg, tmp)
            stop_all()
        if only & {"deploy", "scale"}:
            res["deploy"] = deploy.run(cfg, tmp, log, scale=cfg.scale if "scale" in only or cfg.scale else 0)
        if "autoscale" in only:
            res["autoscale"] = autoscale.run(cfg, tmp, log)
    finally:
        stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    res["goals"] = goals(res)
    out = table(res)
    print(out)
    with open(os.path.join(RESULTS, "latest.json"), "w") as f:
        json.dump(res, f, indent=2)
    svg(res, os.path.join(RESULTS, "latest.svg"))
    with open(os.path.join(RESULTS, "latest.txt"), "w") as f:
        f.write(out + "\n")
    log(f"wrote {RESULTS}/latest.json, latest.svg, latest.txt")


if __name__ == "__main__":
    main()
