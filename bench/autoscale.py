"""Autoscale rows (bench/run --only autoscale).

1. Decision cost: `bench/autoscale_cost.rs` (an example of the `plan` crate, release build):
   one evaluation = `plan::autoscale::series::build` over a metrics store holding 12 h of 15 s
   readings for 100 instances + `plan::autoscale::decide`, what the engine does per setting
   every 30 s (minus reading the setting from SQLite).
2. Load step -> new capacity serving, on real machines with the autoscale test's short knobs
   (crates/cli/tests/autoscale.rs): the daemon evaluates every 5 s
   (SCALESET_AUTOSCALE_INTERVAL_MS=5000) instead of 30 s; the rules are Azure's minimums (PT1M
   grain, 5-minute window, 1-minute cooldown); metrics are sampled every 15 s. Two Standard_B1s
   instances behind the LB, min 2, max 3, "Percentage CPU > 15 max 5m" out by 1. At t0 three
   clients start GET /work?ms=40 (then 60 ms pause) through the LB; measured: t0 -> capacity 3
   decided (the API's sku.capacity), and t0 -> the third instance serving (probed up in the LB
   and answering requests through it). With Azure's 30 s evaluation add up to ~25 s.

Everything runs in a throw-away SCALESET_HOME (subnet BENCH_AUTOSCALE_SUBNET, default
10.213.222.0/24; API 127.0.0.1:7293; machine prefix `bnas`), deleted afterwards.
"""
import http.client
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCALESET = os.path.join(ROOT, "target", "release", "scaleset")
MY_APP = os.path.join(ROOT, "target", "release", "my_app")
SUBNET = os.environ.get("BENCH_AUTOSCALE_SUBNET", "10.213.222.0/24")
LISTEN = os.environ.get("BENCH_AUTOSCALE_LISTEN", "127.0.0.1:7293")
FRONT_PORT = int(os.environ.get("BENCH_AUTOSCALE_FRONTEND_PORT", "18283"))
PREFIX = "bnas"
BASE_CACHE = os.environ.get("SCALESET_BASE_CACHE", "/var/tmp/scaleset-test-base")
RG, VMSS = "rg", "web"
OUT, IN = "Percentage CPU > 15 max 5m", "Percentage CPU < 8 max 5m"


def decision_cost(log, instances=100, evaluations=2000):
    out = subprocess.run(["cargo", "run", "--release", "-q", "-p", "plan", "--example", "autoscale_cost",
                          "--", str(instances), str(evaluations)],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"autoscale_cost: {out.stderr.strip()[-500:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    log(f"autoscale: {r['us_per_evaluation_median']:.0f} µs per evaluation at {instances} instances "
        f"(decide alone {r['us_decide_only']:.2f} µs)")
    return r


def cli(env, *args, timeout=600):
    out = subprocess.run([SCALESET, *args], capture_output=True, text=True, env=env, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"scaleset {' '.join(args)}: {out.stderr.strip()}")
    return json.loads(out.stdout) if out.stdout.strip().startswith(("{", "[")) else out.stdout


def lb_status(home):
    for d in os.listdir(os.path.join(home, "lb")):
        sock = os.path.join(home, "lb", d, "admin.sock")
        out = subprocess.run(["curl", "-s", "--unix-socket", sock, "http://lb/status"],
                             capture_output=True, text=True, timeout=10)
        return json.loads(out.stdout)
    return {}


def healthy_count(env):
    vms = cli(env, "vmss", "list-instances", "-g", RG, "-n", VMSS)
    return sum(1 for v in vms
               if (((v.get("properties") or {}).get("instanceView") or {}).get("vmHealth") or {})
               .get("status", {}).get("code") == "HealthState/healthy")


def wait(what, timeout, f, step=0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if f():
            return time.time()
        time.sleep(step)
    raise RuntimeError(f"autoscale bench: timed out waiting for {what}")


class WorkLoad:
    """Clients on /work?ms=40 through the LB, each pausing 60 ms after an answer."""

    def __init__(self, port, clients=3):
        self.stop = threading.Event()
        self.ok = self.failed = 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.client, args=(port,), daemon=True)
                        for _ in range(clients)]
        for t in self.threads:
            t.start()

    def client(self, port):
        c = None
        while not self.stop.is_set():
            try:
                c = c or http.client.HTTPConnection("127.0.0.1", port, timeout=15)
                c.request("GET", "/work?ms=40")
                r = c.getresponse()
                ok = r.status == 200 and r.read() == b"worked 40 ms\n"
            except (OSError, http.client.HTTPException):
                ok, c = False, None
            with self.lock:
                if ok:
                    self.ok += 1
                else:
                    self.failed += 1
            time.sleep(0.06)

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(20)
        return self.ok, self.failed


def make_drop(tmp):
    drop = os.path.join(tmp, "autoscale-drop")
    os.makedirs(os.path.join(drop, "nginx"), exist_ok=True)
    shutil.copy(MY_APP, os.path.join(drop, "my_app"))
    ex = os.path.join(ROOT, "examples", "my_app")
    for f in ("setupscript.sh", "my_app.service", "nginx/my_app"):
        shutil.copy(os.path.join(ex, f), os.path.join(drop, f))
    return drop


def setup(env, tmp, log):
    cli(env, "image", "bake", "--base", "debian:bookworm", "--package", make_drop(tmp),
        "--script", "setupscript.sh", "--name", "120", timeout=1200)
    cli(env, "group", "create", "-n", RG)
    cli(env, "network", "lb", "create", "-g", RG, "-n", "lb", "--backend-pool-name", "be")
    cli(env, "network", "lb", "probe", "create", "-g", RG, "--lb-name", "lb", "-n", "http",
        "--protocol", "Http", "--port", "80", "--path", "/health", "--interval", "5",
        "--probe-threshold", "2")
    cli(env, "network", "lb", "rule", "create", "-g", RG, "--lb-name", "lb", "-n", "web",
        "--protocol", "Tcp", "--frontend-port", str(FRONT_PORT), "--backend-port", "80",
        "--probe-name", "http")
    cli(env, "vmss", "create", "-g", RG, "-n", VMSS, "--image", "120", "--instance-count", "2",
        "--lb", "lb", "--health-probe", "http")
    wait("2 healthy instances", 180, lambda: healthy_count(env) == 2)
    cli(env, "monitor", "autoscale", "create", "-g", RG, "--resource", VMSS, "--min-count", "2",
        "--max-count", "3", "--count", "2")
    for cond, scale in ((OUT, "out"), (IN, "in")):
        cli(env, "monitor", "autoscale", "rule", "create", "-g", RG, "--autoscale-name", VMSS,
            "--condition", cond, "--scale", scale, "1", "--cooldown", "1")
    log("autoscale: 2 instances healthy, setting and rules in place")


def capacity(env):
    return cli(env, "vmss", "show", "-g", RG, "-n", VMSS)["sku"]["capacity"]


def third_serving(home):
    b = lb_status(home).get("backends", [])
    return len(b) == 3 and all(x["healthy"] and not x.get("suspect") and x["requests"] > 0 for x in b)


def load_step(tmp, log):
    home = tempfile.mkdtemp(prefix="scaleset-bench-autoscale-", dir="/tmp")
    env = dict(os.environ, SCALESET_HOME=home, SCALESET_LISTEN=LISTEN, SCALESET_SUBNET=SUBNET,
               SCALESET_PREFIX=PREFIX, SCALESET_BASE_CACHE=BASE_CACHE,
               SCALESET_AUTOSCALE_INTERVAL_MS="5000")
    for k in ("SCALESET_ENDPOINT", "SCALESET_TOKEN", "SCALESET_PROBE_INTERVAL_MS"):
        env.pop(k, None)
    serve = subprocess.Popen([SCALESET, "serve"], env=env, stdin=subprocess.DEVNULL,
                             stdout=open(os.path.join(home, "serve.log"), "w"), stderr=subprocess.STDOUT,
                             start_new_session=True)
    r = {}
    try:
        wait("the daemon", 30, lambda: os.path.exists(os.path.join(home, "token")), step=0.2)
        time.sleep(1)
        setup(env, tmp, log)
        t0 = time.time()
        load = WorkLoad(FRONT_PORT)
        t_decided = wait("capacity 3", 600, lambda: capacity(env) == 3, step=1)
        t_serving = wait("the third instance serving", 300, lambda: third_serving(home), step=0.2)
        ok, failed = load.finish()
        r = {"load_to_capacity_s": t_decided - t0, "load_to_serving_s": t_serving - t0,
             "decided_to_serving_s": t_serving - t_decided, "work_ok": ok, "work_failed": failed}
        log(f"autoscale: load step -> capacity 3 in {r['load_to_capacity_s']:.1f} s, -> serving in "
            f"{r['load_to_serving_s']:.1f} s ({ok} ok, {failed} failed)")
    finally:
        cleanup(env, home, serve, log)
    return r


def cleanup(env, home, serve, log):
    try:
        cli(env, "vmss", "delete", "-g", RG, "-n", VMSS, timeout=300)
    except Exception as e:  # noqa: BLE001 - the rest of the cleanup still runs
        log(f"autoscale: vmss delete failed: {e}")
    serve.send_signal(signal.SIGTERM)
    try:
        serve.wait(30)
    except subprocess.TimeoutExpired:
        serve.kill()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().decode(errors="replace")
        except OSError:
            continue
        if "lb-serve" in cmd and home + "/" in cmd:
            os.kill(int(d), signal.SIGTERM)
    try:
        with open(os.path.join(home, "network.json")) as f:
            bridge = json.load(f).get("bridge")
    except (OSError, ValueError):
        bridge = None
    if bridge:
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
    # What the home still has mounted (an image layer the bake left mounted), deepest first.
    mounts = subprocess.run(["findmnt", "-rn", "-o", "TARGET"], capture_output=True, text=True).stdout
    for mnt in sorted((m for m in mounts.splitlines() if m.startswith(home + "/")), reverse=True):
        if subprocess.run(["umount", mnt], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", mnt], capture_output=True)
    mounts = subprocess.run(["findmnt", "-rn", "-o", "TARGET"], capture_output=True, text=True).stdout
    if any(m.startswith(home) for m in mounts.splitlines()):
        log(f"autoscale: mounts left under {home}; not removing it")
    else:
        shutil.rmtree(home, ignore_errors=True)


def run(cfg, tmp, log):
    rows, meas, details = [], [], {}
    try:
        c = decision_cost(log)
        details["decision"] = c
        v = c["us_per_evaluation_median"]
        rows.append({"row": "Autoscale evaluation @100 instances", "goal": "(none)", "value": v,
                     "text": f"{v:.0f} µs (decide alone {c['us_decide_only']:.2f} µs)", "met": None})
    except Exception as e:  # noqa: BLE001 - reported as not measured
        rows.append({"row": "Autoscale evaluation @100 instances", "goal": "(none)", "value": None,
                     "text": f"not measured: {e}", "met": None})
    problems = [p for p, bad in (("needs root", os.geteuid() != 0),
                                 ("systemd-nspawn missing", not shutil.which("systemd-nspawn")),
                                 (f"no Debian base in {BASE_CACHE}", not os.path.isdir(BASE_CACHE)))
                if bad]
    try:
        if problems:
            raise RuntimeError("; ".join(problems))
        s = load_step(tmp, log)
        details["load_step"] = s
        rows.append({"row": "Autoscale load step -> serving (5 s eval)", "goal": "(none)",
                     "value": s["load_to_serving_s"],
                     "text": f"{s['load_to_serving_s']:.1f} s (capacity set at "
                             f"{s['load_to_capacity_s']:.1f} s; {s['work_failed']} failed)", "met": None})
    except Exception as e:  # noqa: BLE001 - reported as not measured
        rows.append({"row": "Autoscale load step -> serving (5 s eval)", "goal": "(none)",
                     "value": None, "text": f"not measured: {e}", "met": None})
    for r in rows:
        meas.append({"name": r["row"], "text": r["text"]})
    return {"rows": rows, "measurements": meas, "details": details}
