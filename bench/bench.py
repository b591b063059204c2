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
import math
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


def rss_kib(pids, field="VmRSS:"):
    """Resident KiB over `pids`; `RssAnon:` for the part that is the process's own (RSS also
    counts the binary's and the libraries' file pages the kernel mapped around each fault)."""
    t = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(field):
                        t += int(line.split()[1])
        except OSError:
            pass
    return t


def ctx_switches(pids):
    """Voluntary + involuntary context switches of `pids` so far."""
    t = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
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


def measure_http(url, procs, cfg, conns, perf=False):
    """One measured wrk run; server-side CPU (% of one core), CPU µs, context switches and RSS
    over `procs` trees. With `perf`, also syscalls per request (perf stat on those trees; a
    separate run, as the tracepoint costs the counted side a little)."""
    trees0 = {p.bench_name: tree_pids(real_pid(p)) for p in procs}
    pids0 = [q for t in trees0.values() for q in t]
    t0, c0 = time.time(), {n: cpu_ticks(t) for n, t in trees0.items()}
    x0 = ctx_switches(pids0)
    counter = start_perf(pids0) if perf and pids0 else None
    r = wrk(url, cfg.duration, conns)
    counts = stop_perf(counter) if counter else {}
    trees1 = {p.bench_name: tree_pids(real_pid(p)) for p in procs}
    t1, c1 = time.time(), {n: cpu_ticks(t) for n, t in trees1.items()}
    x1 = ctx_switches([q for t in trees1.values() for q in t])
    # a worker that exited in between would count negative; clamp per tree
    by = {n: max(0, c1[n] - c0.get(n, 0)) / CLK_TCK for n in c1}
    secs = sum(by.values())
    n = r["requests"]
    r["cpu_pct"] = 100.0 * secs / (t1 - t0)
    r["cpu_pct_by"] = {k: 100.0 * v / (t1 - t0) for k, v in by.items()}
    r["cpu_us_per_req"] = 1e6 * secs / n if n and procs else None
    r["ctx_per_req"] = max(0, x1 - x0) / n if n and procs else None
    if "raw_syscalls:sys_enter" in counts and n:
        r["syscalls_per_req"] = counts["raw_syscalls:sys_enter"] / n
    r["rss_mib"] = sum(rss_kib(t) for t in trees1.values()) / 1024.0
    r["rss_anon_mib"] = sum(rss_kib(t, "RssAnon:") for t in trees1.values()) / 1024.0
    return r


def start_perf(pids):
    """perf stat counting syscalls of `pids` until stop_perf; None without perf."""
    if not shutil.which("perf"):
        return None
    out = tempfile.NamedTemporaryFile(prefix="perf-", suffix=".csv", delete=False).name
    p = subprocess.Popen(["perf", "stat", "-x,", "-o", out, "-e", "raw_syscalls:sys_enter",
                          "-p", ",".join(map(str, pids))],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)  # perf attaches
    return p, out


def stop_perf(counter):
    p, out = counter
    p.send_signal(signal.SIGINT)
    p.wait(10)
    counts = {}
    with open(out) as f:
        for line in f:
            parts = line.strip().split(",")
            if len(parts) > 3 and parts[0][:1].isdigit():
                counts[parts[2]] = float(parts[0])
    os.unlink(out)
    return counts


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
    """contenders: list of (name, url, [procs]). A warm-up each, then cfg.runs rounds, each
    round running every contender once in an order rotated by one per round (so no contender
    always follows the same one), then one cost round per contender with perf attached."""
    for name, url, procs in contenders:
        log(f"warm-up {name} ({cfg.warmup}s)")
        wrk(url, cfg.warmup, conns)
    runs = {name: [] for name, _, _ in contenders}
    for i in range(cfg.runs):
        k = i % len(contenders)
        for name, url, procs in contenders[k:] + contenders[:k]:
            r = measure_http(url, procs, cfg, conns)
            log(f"round {i + 1}/{cfg.runs} {name}: {r['rps']:.0f} req/s p50 {r['p50_ms']} ms "
                f"p99 {r['p99_ms']} ms cpu {r['cpu_pct']:.0f}% {fmt_by(r['cpu_pct_by'])} "
                f"{fmt(r['cpu_us_per_req'])} µs/req rss {r['rss_mib']:.1f} MiB err {r['errors']}")
            runs[name].append(r)
    # Runs are stored by round, whatever the order inside it, so run i of A and B are paired.
    out = {name: summarize(rs, ["rps", "p50_ms", "p99_ms", "cpu_pct", "cpu_us_per_req",
                                "ctx_per_req", "rss_mib"])
           for name, rs in runs.items()}
    if cfg.costs:
        for name, url, procs in contenders:
            if procs:
                r = measure_http(url, procs, cfg, conns, perf=True)
                out[name]["syscalls_per_req"] = r.get("syscalls_per_req")
                out[name]["errors"] += r["errors"]
                log(f"cost round {name}: {fmt(r.get('syscalls_per_req'), 2)} syscalls/req")
    return out


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
STACK_RUST, STACK_SEED, STACK_CEILING = 18110, 18111, 18112


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
    res = compare_http([
        ("ours", f"http://127.0.0.1:{OURS_L7}/", [px["ours"]]),
        ("nginx", f"http://127.0.0.1:{NGINX_L7}/", [px["nginx"]]),
        ("haproxy", f"http://127.0.0.1:{HAP_L7}/", [px["haproxy"]]),
    ], cfg, cfg.conns)
    if cfg.costs:
        for name in res:
            res[name]["ir_per_req"] = callgrind_ir(name, cfg.conns)
    return res


def callgrind_ir(target, conns):
    """Instructions per request under callgrind (bench/l7_profile.py, its own ports and
    backends); None without valgrind."""
    if not shutil.which("valgrind"):
        return None
    log(f"callgrind {target} (20,000 requests)")
    out = subprocess.run([sys.executable, os.path.join(BENCH, "l7_profile.py"), target,
                          "--conns", str(conns), "--scaleset", SCALESET],
                         capture_output=True, text=True, timeout=600)
    m = re.search(r"= ([\d,]+) Ir/request", out.stdout)
    if not m:
        log(f"callgrind {target} failed: {out.stdout[-300:]} {out.stderr[-300:]}")
        return None
    return float(m.group(1).replace(",", ""))


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
        k = i % len(contenders)
        for name, host, port, procs in contenders[k:] + contenders[:k]:
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
    }}
    server {{
        listen 127.0.0.1:{STACK_CEILING};
        default_type text/html;
        location = / {{
            root {tmp}/ceiling;
            try_files /index.html =404;
        }}
    }}""")
    wait_port("127.0.0.1", STACK_RUST, proc=ngx)
    wait_port("127.0.0.1", STACK_SEED, proc=ngx)
    check_body(f"http://127.0.0.1:{STACK_RUST}/")
    check_body(f"http://127.0.0.1:{STACK_SEED}/")
    # The ceiling: the same NGINX returns the Rust stack's page itself, from a file.
    _, page = http_get(f"http://127.0.0.1:{STACK_RUST}/")
    os.makedirs(os.path.join(tmp, "ceiling"), exist_ok=True)
    with open(os.path.join(tmp, "ceiling", "index.html"), "w") as f:
        f.write(page)
    check_body(f"http://127.0.0.1:{STACK_CEILING}/")
    # CPU/RSS of the whole server-side stack (nginx + app server).
    res = compare_http([
        ("rust", f"http://127.0.0.1:{STACK_RUST}/", [ngx, app]),
        ("seed", f"http://127.0.0.1:{STACK_SEED}/", [ngx, uwsgi]),
        ("ceiling", f"http://127.0.0.1:{STACK_CEILING}/", [ngx]),
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
    """The per-round ratios a/b (a round runs every contender once, so round i of a and b
    saw similar noise): median, quartiles and range; None without a pair."""
    ra, rb = suite[a].get("runs", []), suite[b].get("runs", [])
    rs = sorted(x[key] / y[key] for x, y in zip(ra, rb) if x.get(key) and y.get(key))
    if not rs:
        return None
    q1, med, q3 = statistics.quantiles(rs, n=4, method="inclusive") if len(rs) > 1 else rs * 3
    return {"median": med, "q1": q1, "q3": q3, "min": rs[0], "max": rs[-1], "n": len(rs)}


def ratio_row(row, goal, st, higher_better, target, strict=None):
    """A goal row over paired ratios. MET only when the quartile on the bad side meets the
    target (most rounds agree); `strict` (L7 req/s) also asks the median for more."""
    if st is None:
        return {"row": row, "goal": goal, "value": None, "met": None}
    bad = st["q1"] if higher_better else st["q3"]
    ok = None
    if target is not None:
        ok = bad >= target if higher_better else bad <= target
        if strict is not None:
            ok = ok and st["median"] >= strict
    text = (f"{st['median']:.2f}x (IQR {st['q1']:.2f}-{st['q3']:.2f}, "
            f"range {st['min']:.2f}-{st['max']:.2f}, n={st['n']})")
    return {"row": row, "goal": goal, "value": st["median"], "stats": st, "text": text,
            "met": ok}


def single_row(row, goal, a, b, target, digits=2):
    """A goal row over one measurement of each side (the cost round, callgrind)."""
    v = ratio(a, b)
    if v is None:
        return {"row": row, "goal": goal, "value": None, "met": None}
    return {"row": row, "goal": goal, "value": v,
            "text": f"{v:.2f}x ({fmt(a, digits)} vs {fmt(b, digits)})",
            "met": (v <= target) if target is not None else None}


def goals(res):
    g = []
    l7 = res.get("l7")
    if l7:
        o, h = l7["ours"], l7["haproxy"]
        g.append(ratio_row("L7 req/s vs HAProxy", ">= 1.1x, q1 >= 1.0",
                           paired(l7, "ours", "haproxy", "rps"), True, 1.0, strict=1.1))
        g.append(ratio_row("L7 p99 vs HAProxy", "<= 1.0x", paired(l7, "ours", "haproxy", "p99_ms"),
                           False, 1.0))
        g.append(ratio_row("L7 CPU µs/req vs HAProxy", "<= 0.9x",
                           paired(l7, "ours", "haproxy", "cpu_us_per_req"), False, 0.9))
        g.append(single_row("L7 syscalls/req vs HAProxy", "<= 0.9x",
                            o.get("syscalls_per_req"), h.get("syscalls_per_req"), 0.9))
        g.append(single_row("L7 instructions/req vs HAProxy", "(callgrind)",
                            o.get("ir_per_req"), h.get("ir_per_req"), None, digits=0))
        rss = max((r["rss_mib"] for r in o.get("runs", [])), default=None)
        anon = {n: max((r.get("rss_anon_mib") or 0 for r in l7[n].get("runs", [])), default=0)
                for n in ("ours", "haproxy")}
        text = f"{rss:.1f} MiB" if rss is not None else None
        if text and anon["ours"]:
            text += f" (anonymous {anon['ours']:.1f}, HAProxy's {anon['haproxy']:.1f})"
        g.append({"row": "L7 RSS (max over rounds)", "goal": "<= 10 MiB", "value": rss,
                  "text": text, "met": rss is not None and rss <= 10})
        g.append(ratio_row("L7 req/s vs nginx", "(no goal)", paired(l7, "ours", "nginx", "rps"),
                           True, None))
    l4 = res.get("l4_small")
    if l4:
        g.append(ratio_row("L4 small req/s vs HAProxy", ">= 1.0x",
                           paired(l4, "ours", "haproxy", "rps"), True, 1.0))
    bulk = res.get("l4_bulk")
    if bulk:
        g.append(ratio_row("L4 bulk Gbit/s vs HAProxy", ">= 1.0x",
                           paired(bulk, "ours", "haproxy", "gbit_s"), True, 1.0))
    app = res.get("app")
    if app:
        if "ceiling" in app:
            g.append(ratio_row("App stack (Rust) vs NGINX ceiling", ">= 0.8x",
                               paired(app, "rust", "ceiling", "rps"), True, 0.8))
            g.append(ratio_row("App stack (seed) vs NGINX ceiling", "(no goal)",
                               paired(app, "seed", "ceiling", "rps"), True, None))
        g.append(ratio_row("App stack req/s vs seed", ">= 20x", paired(app, "rust", "seed", "rps"),
                           True, 20))
        g.append(ratio_row("App stack p99 vs seed", "<= 0.1x",
                           paired(app, "rust", "seed", "p99_ms"), False, 0.1))
    for key in ("deploy", "autoscale"):
        for row in res.get(key, {}).get("rows", []):
            g.append(row)
    return g


def verdict(g):
    if g.get("met") is None:
        return "NOT MEASURED" if g.get("value") is None else "(no goal)"
    return "MET" if g["met"] else "MISSED"


def lead_markdown(res):
    """BENCHMARKS.md's lead table: one row per ratio, its spread and the commit."""
    m = res["meta"]
    lines = [f"Commit `{m['commit']}`, {m['date']}, {m['mode']} run: {m['runs']} rounds x "
             f"{m['duration_s']} s per contender, order rotated per round.", "",
             "| ratio | goal | median | IQR | range | verdict |", "|---|---|---:|---:|---:|---|"]
    for g in res["goals"]:
        st = g.get("stats")
        if st:
            lines.append(f"| {g['row']} | {g['goal']} | {st['median']:.2f}x | "
                         f"{st['q1']:.2f}-{st['q3']:.2f} | {st['min']:.2f}-{st['max']:.2f} | "
                         f"{verdict(g)} |")
        else:
            val = g.get("text") or (f"{g['value']:.2f}" if g.get("value") is not None else "-")
            lines.append(f"| {g['row']} | {g['goal']} | {val} | | | {verdict(g)} |")
    return "\n".join(lines) + "\n"


def fmt(v, nd=1):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    return str(v)


def table(res):
    lines = []
    hdr = (f"{'suite':<14}{'contender':<10}{'req/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'CPU %':>7}"
           f"{'µs/req':>8}{'cs/req':>7}{'sys/req':>8}{'Ir/req':>8}{'RSS MiB':>9}{'err':>5}"
           f"{'ratio':>8}{'eff.':>7}")
    for key, title, base in (("l7", "L7 proxy", "haproxy"), ("l4_small", "L4 small", "haproxy"),
                             ("app", "App stack", "seed")):
        if key not in res:
            continue
        lines.append(hdr if not lines else "")
        if lines[-1] == "":
            lines.append(hdr)
        lines.append("-" * len(hdr))
        for name, s in res[key].items():
            lines.append(f"{title:<14}{name:<10}{fmt(s['rps'], 0):>11}{fmt(s['p50_ms'], 2):>9}"
                         f"{fmt(s['p99_ms'], 2):>9}{fmt(s['cpu_pct'], 0):>7}{fmt(s['cpu_us_per_req'], 1):>8}"
                         f"{fmt(s.get('ctx_per_req'), 2):>7}{fmt(s.get('syscalls_per_req'), 2):>8}"
                         f"{fmt(s.get('ir_per_req'), 0):>8}{fmt(s['rss_mib'], 1):>9}"
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
                 "(baseline CPU µs per request / this one's); cs = context switches, "
                 "sys = syscalls (perf, one cost round), Ir = instructions (callgrind); "
                 f"medians of {res['meta']['runs']} rounds, order rotated per round")
    lines.append("")
    lines.append("Goals")
    lines.append("-" * 60)
    for g in res["goals"]:
        val = g.get("text") or (f"{g['value']:.2f}x" if g.get("value") is not None else "-")
        lines.append(f"  {g['row']:<36} goal {g['goal']:<20} got {val:<50} {verdict(g)}")
    return "\n".join(lines)


def esc(t):
    return str(t).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def svg(res, path):
    """The ratios as a chart: per goal row a bar to the median of the paired ratios, a whisker
    over the interquartile range (log scale, 1x marked), then the other rows as text."""
    W, left, right, barh = 1040, 300, 270, 16
    lo, hi = math.log2(1 / 32), math.log2(32)
    x = lambda v: left + (min(max(math.log2(v), lo), hi) - lo) / (hi - lo) * (W - left - right)
    colors = {"MET": "#2a8a2a", "MISSED": "#b03a3a"}
    parts, y = [], 50
    parts.append(f'<line x1="{x(1):.1f}" y1="{y - 8}" x2="{x(1):.1f}" y2="{{BOTTOM}}" stroke="#999" stroke-dasharray="3,3"/>')
    for t, label in ((1 / 32, "1/32"), (1 / 8, "1/8"), (0.5, "1/2"), (1, "1"), (2, "2"), (8, "8"),
                     (32, "32")):
        parts.append(f'<text x="{x(t):.1f}" y="{y - 12}" text-anchor="middle" fill="#666">{label}x</text>')
    rest = []
    for g in res.get("goals", []):
        st = g.get("stats")
        if not st:
            rest.append(g)
            continue
        v = verdict(g)
        col = colors.get(v, "#2b7bb9")
        parts.append(f'<text x="{left - 8}" y="{y + 12}" text-anchor="end">{esc(g["row"])}</text>')
        parts.append(f'<rect x="{left}" y="{y}" width="{x(st["median"]) - left:.1f}" '
                     f'height="{barh}" fill="{col}" opacity="0.75"/>')
        parts.append(f'<line x1="{x(st["q1"]):.1f}" y1="{y + barh / 2}" x2="{x(st["q3"]):.1f}" '
                     f'y2="{y + barh / 2}" stroke="black" stroke-width="2"/>')
        for q in (st["q1"], st["q3"]):
            parts.append(f'<line x1="{x(q):.1f}" y1="{y + 3}" x2="{x(q):.1f}" y2="{y + barh - 3}" stroke="black"/>')
        goal = g["goal"] if g["goal"].startswith("(") else f'(goal {g["goal"]})'
        parts.append(f'<text x="{W - right + 8}" y="{y + 12}">{st["median"]:.2f}x '
                     f'{esc(goal)} </text><text x="{W - 10}" y="{y + 12}" text-anchor="end" '
                     f'fill="{col}" font-weight="bold">{v}</text>')
        y += barh + 8
    bottom = y
    y += 24
    for g in rest:
        v = verdict(g)
        val = g.get("text") or (f"{g['value']:.2f}" if g.get("value") is not None else "-")
        val = (val[:80] + "…") if len(val) > 80 else val
        parts.append(f'<text x="10" y="{y}">{esc(g["row"])} ({esc(g["goal"])}): {esc(val)}</text>'
                     f'<text x="{W - 10}" y="{y}" text-anchor="end" fill="{colors.get(v, "#777")}" '
                     f'font-weight="bold">{v}</text>')
        y += 18
    y += 10
    m = res["meta"]
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{y}" '
            f'font-family="sans-serif" font-size="13">'
            f'<rect width="100%" height="100%" fill="white"/>'
            f'<text x="10" y="22" font-size="15" font-weight="bold">scaleset benchmarks: median of '
            f'paired per-round ratios, IQR whiskers ({m["mode"]}, {m["runs"]} rounds, '
            f'{esc(m["commit"])}, {m["date"]})</text>')
    body = "".join(parts).replace("{BOTTOM}", str(bottom))
    with open(path, "w") as f:
        f.write(head + body + "</svg>\n")


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
                    help="short smoke run (3 rounds x 2 s, 1 s warm-up, no cost rounds; "
                         "full: 15 rounds x 4 s, 3 s warm-up, perf and callgrind cost rounds)")
    ap.add_argument("--costs", action="store_true",
                    help="with --quick: still run the cost rounds (perf syscalls, callgrind)")
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
        out = table(res)
        print(out)
        print(lead_markdown(res))
        if os.path.abspath(cfg.from_json) == os.path.join(RESULTS, "latest.json"):
            # Re-rendered in place (e.g. after a goal changed): the text and lead table too.
            with open(os.path.join(RESULTS, "latest.txt"), "w") as f:
                f.write(out + "\n")
            with open(os.path.join(RESULTS, "latest.md"), "w") as f:
                f.write(lead_markdown(res))
        svg(res, os.path.join(RESULTS, "latest.svg"))
        return
    cfg.runs = cfg.runs or (3 if cfg.quick else 15)
    cfg.duration = cfg.duration or (2 if cfg.quick else 4)
    cfg.warmup = 1 if cfg.quick else 3
    cfg.costs = not cfg.quick or cfg.costs
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
    with open(os.path.join(RESULTS, "latest.md"), "w") as f:
        f.write(lead_markdown(res))
    log(f"wrote {RESULTS}/latest.json, latest.svg, latest.txt")


if __name__ == "__main__":
    main()
