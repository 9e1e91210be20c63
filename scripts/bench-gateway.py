#!/usr/bin/env python3
"""Load runs of the gateway (release build), printing figures for docs/benchmarks.md.

  fanout: the demo session (1280x720@30, ~2 Mb/s H.264 + Opus) to N `whep-client load` viewers;
          the gateway's CPU seconds per viewer-second and RSS per viewer over a steady window
          (the transcoder is another process and is not counted; whep-client runs on the same
          2 cores and competes with the gateway, so the figures are upper bounds).
  ttff:   POST → first complete video frame at whep-client, warm (transcoder running) and
          cold (the first viewer starts the transcoder).

Usage: scripts/bench-gateway.py [fanout|ttff|all] [--viewers 50,100,200] [--window 20]
Everything runs on 127.0.0.1. Build first: cargo build --release -p wisp -p wisp-transcoder -p whep-client
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release")
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def rss_mib(pid):
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


class Gateway:
    def __init__(self, idle_timeout=60):
        self.dir = tempfile.mkdtemp(prefix="wisp-bench-")
        self.secret = os.path.join(self.dir, "secret")
        with open(self.secret, "w") as f:
            f.write(os.urandom(32).hex())
        self.base = "http://127.0.0.1:18180"
        self.log = open(os.path.join(self.dir, "wisp.log"), "w")
        self.proc = subprocess.Popen(
            [f"{BIN}/wisp", "serve", "--http", "127.0.0.1:18180", "--rtc", "127.0.0.1:18543",
             "--jwt-secret-file", self.secret, "--state-dir", self.dir,
             "--transcoder", f"{BIN}/wisp-transcoder", "--idle-timeout", str(idle_timeout)],
            stdout=subprocess.DEVNULL, stderr=self.log, env={**os.environ, "WISP_LOG": "warn"})
        for _ in range(200):
            try:
                urllib.request.urlopen(self.base + "/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.05)
        self.token = self.mint("demo", "view")
        self.admin = self.mint("*", "admin")

    def mint(self, sessions, scope):
        return subprocess.check_output(
            [f"{BIN}/wisp", "token", "--jwt-secret-file", self.secret, "--sessions", sessions,
             "--scope", scope, "--ttl", "3600"], text=True).strip()

    def session(self):
        req = urllib.request.Request(self.base + "/api/sessions/demo",
                                     headers={"Authorization": "Bearer " + self.admin})
        return json.load(urllib.request.urlopen(req, timeout=5))

    def close(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=20)
        shutil.rmtree(self.dir, ignore_errors=True)


def fanout(viewers_list, window):
    rows = []
    for n in viewers_list:
        gw = Gateway()
        # One viewer first, so the transcoder runs and the baseline holds a live session.
        warm = subprocess.Popen([f"{BIN}/whep-client", "play", gw.base + "/whep/demo", "--token",
                                 gw.token, "--frames", "100000000", "--timeout", "100000"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(3)
        base_rss = rss_mib(gw.proc.pid)
        ramp = 50.0
        duration = int(n / ramp) + 5 + window + 5
        load = subprocess.Popen([f"{BIN}/whep-client", "load", gw.base + "/whep/demo", "--token",
                                 gw.token, "--viewers", str(n), "--duration", str(duration),
                                 "--ramp", str(ramp), "--json"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        time.sleep(n / ramp + 5)  # ramp up, then settle
        c0, t0 = cpu_seconds(gw.proc.pid), time.monotonic()
        rss_samples = []
        while time.monotonic() - t0 < window:
            time.sleep(1)
            rss_samples.append(rss_mib(gw.proc.pid))
        c1, t1 = cpu_seconds(gw.proc.pid), time.monotonic()
        out, _ = load.communicate(timeout=duration + 60)
        warm.terminate()
        warm.wait()
        gw.close()
        summary = json.loads(out.strip().splitlines()[-1])
        viewer_seconds = (n + 1) * (t1 - t0)
        rss = statistics.median(rss_samples)
        row = {
            "viewers": n,
            "connected": summary["connected"],
            "with_video": summary["with_video"],
            "fps_mean": round(summary["fps_mean"], 1),
            "fps_min": round(summary["fps_min"], 1),
            "lost_packets": summary["lost_packets"],
            "cpu_ms_per_viewer_s": round(1000 * (c1 - c0) / viewer_seconds, 3),
            "gateway_cpu_percent": round(100 * (c1 - c0) / (t1 - t0), 1),
            "rss_mib": round(rss, 1),
            "rss_mib_per_viewer": round((rss - base_rss) / n, 3),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def first_frame(gw):
    out = subprocess.run([f"{BIN}/whep-client", "play", gw.base + "/whep/demo", "--token", gw.token,
                          "--frames", "1", "--timeout", "20", "--json"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["first_frame_ms"]


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def ttff(runs):
    gw = Gateway(idle_timeout=1)
    cold = []
    for _ in range(runs):
        # Wait until the idle timeout stopped the transcoder.
        while gw.session()["state"] != "idle":
            time.sleep(0.1)
        cold.append(first_frame(gw))
    gw.close()
    gw = Gateway(idle_timeout=600)
    keep = subprocess.Popen([f"{BIN}/whep-client", "play", gw.base + "/whep/demo", "--token",
                             gw.token, "--frames", "100000000", "--timeout", "100000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(3)
    warm = []
    for _ in range(runs):
        warm.append(first_frame(gw))
        time.sleep(0.7)  # past the 500 ms keyframe-request throttle
    keep.terminate()
    keep.wait()
    gw.close()
    result = {
        "runs": runs,
        "cold_ms": {"p50": pct(cold, 50), "p95": pct(cold, 95), "all": cold},
        "warm_ms": {"p50": pct(warm, 50), "p95": pct(warm, 95), "all": warm},
    }
    print(json.dumps(result), flush=True)
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", nargs="?", default="all", choices=["fanout", "ttff", "all"])
    ap.add_argument("--viewers", default="50,100,200")
    ap.add_argument("--window", type=int, default=20)
    ap.add_argument("--runs", type=int, default=20)
    a = ap.parse_args()
    for b in ("wisp", "wisp-transcoder", "whep-client"):
        if not os.path.exists(f"{BIN}/{b}"):
            sys.exit(f"{BIN}/{b} missing: cargo build --release -p wisp -p wisp-transcoder -p whep-client")
    if a.what in ("ttff", "all"):
        ttff(a.runs)
    if a.what in ("fanout", "all"):
        fanout([int(v) for v in a.viewers.split(",")], a.window)


if __name__ == "__main__":
    main()
