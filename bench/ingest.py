#!/usr/bin/env python3
"""Ingest benchmark: `hookline serve` against the insert-only baseline, side by side.

Run through bench/ingest.sh (which builds the release binaries). It starts a private Postgres
(its own data directory and port, TLS on with the system's snakeoil certificate, so that
`sslmode=disable` can be compared with the default) and a private Redis, so the CPU of
Postgres and Redis is this benchmark's alone. It creates COMPANIES companies with
CONNECTIONS_PER_COMPANY connections each through the API, and BODIES distinct bodies (variants
of webhook_issue_created.json: their own issue id, key, summary and timestamp), each signed with
its connection's secret. Every request gets a unique X-Atlassian-Webhook-Identifier.

Every variant (a server and its settings) runs at once on its own port; each round then posts to
each variant in turn (the order alternates between rounds) for DURATION at each of CONCURRENCY
connections, after a short warm-up. For each run: requests/s, p50/p99 (wrk), and the CPU of the
server, of all Postgres processes and of Redis (from /proc/<pid>/stat) per accepted webhook.
The medians over ROUNDS rounds are printed as a table at the end, with the load average. At the
end every accepted webhook must be stored.

Settings (environment): ROUNDS (3), DURATION (10s), WARMUP (2s), CONCURRENCY ("16 64"),
COMPANIES (4), CONNECTIONS_PER_COMPANY (3), BODIES (2000), SSLMODES ("prefer disable": the
variants of each server per sslmode; "prefer" is the default of a URL without sslmode),
POOL_SIZES (e.g. "8 32": extra hookline variants with HOOKLINE_DATABASE_POOL_SIZE, if this
hookline has that setting), PERF (a file: record a perf profile of the hookline API during its
first 16-connection run), BIN (the release directory), FIXTURE, BASELINE_BIN (another
`hookline` binary, e.g. main before a change: an extra "hookline baseline" variant per sslmode,
on the same schema).
"""

import copy
import hashlib
import hmac
import json
import os
import random
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
BIN = os.environ.get("BIN", os.path.join(ROOT, "target", "release"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
DURATION = os.environ.get("DURATION", "10s")
WARMUP = os.environ.get("WARMUP", "2s")
CONCURRENCY = [int(c) for c in os.environ.get("CONCURRENCY", "16 64").split()]
COMPANIES = int(os.environ.get("COMPANIES", "4"))
CONNECTIONS_PER_COMPANY = int(os.environ.get("CONNECTIONS_PER_COMPANY", "3"))
BODIES = int(os.environ.get("BODIES", "2000"))
SSLMODES = os.environ.get("SSLMODES", "prefer disable").split()
POOL_SIZES = os.environ.get("POOL_SIZES", "").split()
PERF = os.environ.get("PERF")
BASELINE_BIN = os.environ.get("BASELINE_BIN")
FIXTURE = os.environ.get(
    "FIXTURE", os.path.join(ROOT, "fixtures", "jira", "webhook_issue_created.json")
)
HZ = os.sysconf("SC_CLK_TCK")
# Webhooks answered 2xx over every wrk run, warm-ups included: all of them must be stored.
# wrk ends a run with requests in flight: those may be stored without their answer being counted,
# at most one per connection per run.
ACCEPTED = {"total": 0, "cut_off_at_most": 0}
ADMIN_TOKEN = "bench-admin"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def ticks(pid):
    """utime + stime of one process, in clock ticks (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0


def children_ticks(parent):
    """The ticks of `parent` and every process whose parent it is (Postgres' backends)."""
    total = ticks(parent)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == parent:
            total += int(fields[11]) + int(fields[12])
    return total


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


class Postgres:
    """A private Postgres server in a temporary directory, run as the `postgres` user."""

    def __init__(self, workdir):
        self.dir = os.path.join(workdir, "pg")
        self.port = free_port()
        os.makedirs(self.dir)
        shutil.chown(self.dir, "postgres")
        cert = os.path.join(self.dir, "server.crt")
        key = os.path.join(self.dir, "server.key")
        self.as_postgres(["initdb", "-D", f"{self.dir}/data", "-U", "postgres", "--auth=trust"])
        shutil.copy("/etc/ssl/certs/ssl-cert-snakeoil.pem", cert)
        shutil.copy("/etc/ssl/private/ssl-cert-snakeoil.key", key)
        for path in (cert, key):
            shutil.chown(path, "postgres")
            os.chmod(path, 0o600)
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c ssl=on "
            f"-c ssl_cert_file={cert} -c ssl_key_file={key} -c max_connections=200 "
            "-c shared_buffers=128MB"
        )
        self.as_postgres(
            ["pg_ctl", "-D", f"{self.dir}/data", "-l", f"{self.dir}/log", "-o", options, "-w", "start"]
        )
        with open(f"{self.dir}/data/postmaster.pid") as pidfile:
            self.pid = int(pidfile.readline())

    def as_postgres(self, command):
        subprocess.run(
            ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(f"'{c}'" for c in command)],
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def psql(self, database, sql):
        return subprocess.run(
            ["psql", "-qtA", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", database, "-c", sql],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    def url(self, database, sslmode):
        url = f"postgres://postgres@127.0.0.1:{self.port}/{database}"
        return url if sslmode == "prefer" else f"{url}?sslmode={sslmode}"

    def stop(self):
        self.as_postgres(["pg_ctl", "-D", f"{self.dir}/data", "-m", "fast", "stop"])


class Redis:
    def __init__(self):
        self.port = free_port()
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        self.pid = self.process.pid
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis did not start")

    def stop(self):
        self.process.terminate()
        self.process.wait()


class Server:
    """One variant: `hookline serve` or the insert-only baseline, with its settings."""

    def __init__(self, name, command, env, workdir):
        self.name = name
        self.port = free_port()
        env = dict(env, HOOKLINE_LISTEN=f"127.0.0.1:{self.port}")
        self.log = open(os.path.join(workdir, name.replace(" ", "_").replace("=", "-") + ".log"), "w")
        self.process = subprocess.Popen(command, env=env, stdout=self.log, stderr=self.log)
        self.pid = self.process.pid
        self.max_rss_kib = 0
        for _ in range(200):
            try:
                urllib.request.urlopen(f"{self.url}/", timeout=1)
                return
            except urllib.error.HTTPError:
                return  # it answers (404 for an unknown path)
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{name} exited; see {self.log.name}")
                time.sleep(0.1)
        raise RuntimeError(f"{name} did not start")

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()


def api(url, path, body, token):
    request = urllib.request.Request(
        url + path,
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", "authorization": f"Bearer {token}"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def make_requests(server, path):
    """Companies and connections through the API, then BODIES signed, distinct bodies."""
    connections = []
    for c in range(COMPANIES):
        company = api(server.url, "/api/v1/companies", {"name": f"bench company {c}"}, ADMIN_TOKEN)
        for n in range(CONNECTIONS_PER_COMPANY):
            connection = api(
                server.url,
                "/api/v1/connections",
                {"pluginId": "jira", "externalId": f"bench-{c}-{n}.atlassian.net", "externalName": f"bench {c}/{n}"},
                company["apiKey"],
            )
            connections.append((connection["id"], connection["webhookSecret"]))
    with open(FIXTURE, "rb") as f:
        fixture = json.load(f)
    rng = random.Random(42)
    sizes = []
    with open(path, "wb") as out:
        for i in range(BODIES):
            connection_id, secret = connections[i % len(connections)]
            payload = copy.deepcopy(fixture)
            project = f"P{i % 37}"
            payload["timestamp"] = 1_764_000_000_000 + i * 1_000
            payload["issue"]["id"] = str(100_000 + i)
            payload["issue"]["key"] = f"{project}-{i}"
            payload["issue"]["self"] = f"https://bench-{i % COMPANIES}.atlassian.net/rest/api/3/issue/{100_000 + i}"
            fields = payload["issue"].setdefault("fields", {})
            fields["summary"] = f"Issue {i}: " + " ".join(rng.choice(["disk", "queue", "latency", "\u00e9t\u00e9", "retry", "\"quoted\""]) for _ in range(6))
            body = json.dumps(payload, indent=2, ensure_ascii=rng.random() < 0.5).encode()
            signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
            out.write(f"/webhook/jira/{connection_id}\t{signature}\t{len(body)}\n".encode())
            out.write(body)
            sizes.append(len(body))
    return len(connections), statistics.median(sizes)


def wrk(url, connections, duration, run_id, requests_file):
    output = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{duration}", "--latency", "-s", os.path.join(ROOT, "bench", "ingest.lua"), url],
        env=dict(os.environ, REQUESTS_FILE=requests_file, RUN_ID=run_id),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(line for line in output.splitlines() if line.startswith("RESULT"))
    figures = {key: int(value) for key, value in (item.split("=") for item in line.split()[1:])}
    ACCEPTED["total"] += figures["requests"] - figures["non2xx"]
    ACCEPTED["cut_off_at_most"] += connections
    return figures


def main():
    workdir = tempfile.mkdtemp(prefix="hookline-ingest-bench-")
    os.chmod(workdir, 0o755)  # Postgres runs as `postgres` in a directory below it.
    postgres = Postgres(workdir)
    redis = Redis()
    servers = []
    try:
        postgres.psql("postgres", "CREATE DATABASE bench")
        base_env = dict(
            os.environ,
            REDIS_URL=f"redis://127.0.0.1:{redis.port}",
            HOOKLINE_ENCRYPTION_KEY="MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
            HOOKLINE_ADMIN_TOKEN=ADMIN_TOKEN,
            HOOKLINE_QUEUE_PREFIX="bench",
            # The load comes from a dozen connections at thousands of webhooks a second.
            HOOKLINE_INGEST_RATE_LIMIT="0",
            RUST_LOG="warn",
        )
        subprocess.run(
            [f"{BIN}/hookline", "migrate"],
            env=dict(base_env, DATABASE_URL=postgres.url("bench", "prefer")),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        variants = []
        for sslmode in SSLMODES:
            suffix = "" if sslmode == "prefer" else f" sslmode={sslmode}"
            env = dict(base_env, DATABASE_URL=postgres.url("bench", sslmode))
            variants.append((f"hookline{suffix}", [f"{BIN}/hookline", "serve"], env))
            variants.append((f"insert-only{suffix}", [f"{BIN}/ingest-insert-only"], env))
            if BASELINE_BIN:
                variants.append((f"hookline baseline{suffix}", [BASELINE_BIN, "serve"], env))
        for size in POOL_SIZES:
            env = dict(base_env, DATABASE_URL=postgres.url("bench", "prefer"), HOOKLINE_DATABASE_POOL_SIZE=size)
            variants.append((f"hookline pool={size}", [f"{BIN}/hookline", "serve"], env))
        for name, command, env in variants:
            servers.append(Server(name, command, env, workdir))
            log(f"started {name} on {servers[-1].url}")

        requests_file = os.path.join(workdir, "requests")
        connections, median_size = make_requests(servers[0], requests_file)
        log(f"{BODIES} bodies (median {median_size:.0f} bytes) over {connections} connections of {COMPANIES} companies")

        results = {}  # (variant, concurrency) -> list of runs
        perf_done = False
        run = 0
        for round_number in range(ROUNDS):
            order = servers if round_number % 2 == 0 else list(reversed(servers))
            for concurrency in CONCURRENCY:
                for server in order:
                    run += 1
                    run_id = f"r{round_number}-{run}-{server.port}"
                    wrk(server.url, concurrency, WARMUP, run_id + "w", requests_file)
                    load_before = loadavg()
                    before = (ticks(server.pid), children_ticks(postgres.pid), ticks(redis.pid))
                    perf = None
                    if PERF and not perf_done and server.name == "hookline" and concurrency == 16:
                        perf = subprocess.Popen(
                            ["perf", "record", "-e", "cpu-clock", "-F", "499", "-g", "-o", PERF, "-p", str(server.pid), "--", "sleep", "6"],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                        )
                        perf_done = True
                    figures = wrk(server.url, concurrency, DURATION, run_id, requests_file)
                    if perf:
                        perf.wait()
                    after = (ticks(server.pid), children_ticks(postgres.pid), ticks(redis.pid))
                    server.max_rss_kib = max(server.max_rss_kib, rss_kib(server.pid))
                    accepted = figures["requests"] - figures["non2xx"]
                    cpu_ms = [(a - b) * 1000 / HZ / max(accepted, 1) for a, b in zip(after, before)]
                    entry = {
                        "rps": accepted / (figures["duration_us"] / 1e6),
                        "p50": figures["p50_us"] / 1000,
                        "p99": figures["p99_us"] / 1000,
                        "errors": figures["non2xx"] + figures["socket_errors"],
                        "cpu_server": cpu_ms[0],
                        "cpu_pg": cpu_ms[1],
                        "cpu_redis": cpu_ms[2],
                        "load": f"{load_before} -> {loadavg()}",
                    }
                    results.setdefault((server.name, concurrency), []).append(entry)
                    log(
                        f"round {round_number + 1} {server.name:28} c={concurrency:<3} {entry['rps']:7.0f}/s "
                        f"p50 {entry['p50']:6.2f} ms p99 {entry['p99']:7.2f} ms errors {entry['errors']} "
                        f"CPU/webhook server {cpu_ms[0]:.3f} pg {cpu_ms[1]:.3f} redis {cpu_ms[2]:.3f} ms "
                        f"(load {entry['load']})"
                    )

        stored = int(postgres.psql("bench", "SELECT count(*) FROM webhook_event"))
        print(f"\nmachine: {os.cpu_count()} cores; {ROUNDS} rounds of {DURATION} per run; medians:\n")
        print("| variant | connections | webhooks/s | vs insert-only | p50 | p99 | CPU/webhook: server + Postgres + Redis = total | errors | load (start → end of its runs) |")
        print("|---|---|---|---|---|---|---|---|---|")
        for (name, concurrency), runs in results.items():
            med = lambda key: statistics.median(run[key] for run in runs)
            baseline_name = "insert-only" + (name[name.index(" sslmode="):] if " sslmode=" in name else "")
            baseline = results.get((baseline_name, concurrency))
            ratio = ""
            if baseline and not name.startswith("insert-only"):
                ratio = f"{med('rps') / statistics.median(run['rps'] for run in baseline):.2f}x"
            total = med("cpu_server") + med("cpu_pg") + med("cpu_redis")
            print(
                f"| {name} | {concurrency} | {med('rps'):,.0f} | {ratio} | {med('p50'):.1f} ms | {med('p99'):.1f} ms | "
                f"{med('cpu_server'):.3f} + {med('cpu_pg'):.3f} + {med('cpu_redis'):.3f} = {total:.3f} ms | "
                f"{sum(run['errors'] for run in runs)} | {runs[0]['load'].split(' -> ')[0]} → {runs[-1]['load'].split(' -> ')[1]} |"
            )
        print()
        for server in servers:
            print(f"{server.name}: max RSS {server.max_rss_kib / 1024:.1f} MiB")
        print(
            f"webhooks answered 2xx: {ACCEPTED['total']}; events stored: {stored} "
            f"(at most {ACCEPTED['cut_off_at_most']} more than answered: in flight when wrk stopped)"
        )
        if not ACCEPTED["total"] <= stored <= ACCEPTED["total"] + ACCEPTED["cut_off_at_most"]:
            print("MISMATCH: not every accepted webhook is stored")
            sys.exit(1)
    finally:
        for server in servers:
            server.stop()
        redis.stop()
        postgres.stop()
        if not os.environ.get("KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"kept {workdir}")


if __name__ == "__main__":
    main()
