#!/usr/bin/env python3
"""Three Wisp nodes on three hosts, and a Redis: the cluster as its users meet it.

Each node runs in a network namespace of its own, with its own address on a veth bridge this
test makes (10.77.0.1-3/24); Redis and the clients (whep-client, ffmpeg) are on the bridge's
own address, 10.77.0.254, in the namespace this script runs in (scripts/cluster starts it in
a private one with `unshare -n`). Only these addresses are used.

  n1 (A): capacity 1    n2 (B): capacity 2    n3 (C): capacity 1.5, an edge (--relay)
  every node: relay_above = 100

What it checks, in order (each prints one JSON line; the first failure exits 1):
  placement   a VOD session made through A lands on the node with the most room (B)
  redirect    a viewer POSTing to the wrong node (A) follows the 307 and plays from B; its
              trickle PATCH and its DELETE go to B (204, 200)
  edge-live   a live RTMP publish on B, watched on C through an edge relay: first frame <= 1 s
  edge-seek   a seek sent by a viewer on C moves the session for a viewer on B too
  conformance the WHEP conformance suite against A's endpoint of B's session: every POST is
              redirected to B, WHxP-REDIRECT passes, and no MUST fails
  spread      300 viewers entering at A of a session A holds spread over the nodes by load
              (A keeps about relay_above, the edges take the rest, the roomier more)
  redis       Redis stopped: the nodes keep serving; started again: they register again
  failover    kill -9 of B: its VOD session is made again on another node, and a viewer
              (entering at A) plays it again within 10 s of the kill

With --bench it instead measures first-frame times, p50 over 20 viewers each: a viewer of a
session on B entering at A (one 307) and a viewer on the edge C (through its relay); then each
node's CPU per viewer-second with 300 viewers spread over the cluster; and prints them.

Usage: scripts/cluster [--bench] [--profile debug|release]
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HUB = "10.77.0.254"
PREFIX = f"wisp{os.getpid()}"


def run(*cmd, check=True, **kw):
    return subprocess.run(cmd, check=check, **kw)


def say(step, ok=True, **facts):
    print(json.dumps({"step": step, "ok": ok, **facts}), flush=True)


def fail(step, message, **facts):
    say(step, False, error=message, **facts)
    raise SystemExit(1)


class Net:
    """The bridge here and one namespace per node, joined to it by a veth pair."""

    def __init__(self):
        self.names = []
        run("ip", "link", "set", "lo", "up")
        run("ip", "link", "add", "br0", "type", "bridge")
        run("ip", "addr", "add", f"{HUB}/24", "dev", "br0")
        run("ip", "link", "set", "br0", "up")

    def host(self, k):
        ns = f"{PREFIX}-n{k}"
        run("ip", "netns", "add", ns)
        self.names.append(ns)
        run("ip", "link", "add", f"v{k}", "type", "veth", "peer", "name", f"v{k}p")
        run("ip", "link", "set", f"v{k}p", "netns", ns)
        run("ip", "link", "set", f"v{k}", "master", "br0", "up")
        for cmd in (
            ["ip", "link", "set", "lo", "up"],
            ["ip", "addr", "add", f"10.77.0.{k}/24", "dev", f"v{k}p"],
            ["ip", "link", "set", f"v{k}p", "up"],
        ):
            run("ip", "netns", "exec", ns, *cmd)
        return ns

    def close(self):
        for ns in self.names:
            run("ip", "netns", "del", ns, check=False)


class Node:
    def __init__(self, k, ns, work, bins, capacity, extra=()):
        self.k = k
        self.url = f"http://10.77.0.{k}:8080"
        self.log_path = os.path.join(work, f"n{k}.log")
        toml = os.path.join(work, f"n{k}.toml")
        with open(toml, "w") as f:
            f.write("demo = false\nidle_timeout = 30\n[cluster]\nrelay_above = 100\n")
        cmd = [
            "ip", "netns", "exec", ns, os.path.join(bins, "wisp"), "serve",
            "--http", f"10.77.0.{k}:8080", "--rtc", f"10.77.0.{k}:8443",
            "--rtmp", f"10.77.0.{k}:1935", "--srt", "off", "--metrics", "off",
            "--jwt-secret-file", os.path.join(work, "secret"),
            "--state-dir", os.path.join(work, f"state{k}"), "--config", toml,
            "--transcoder", os.path.join(bins, "wisp-transcoder"),
            "--cluster", f"redis://{HUB}:6379/0", "--node-url", self.url,
            "--capacity", str(capacity), *extra,
        ]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=open(self.log_path, "w"),
            env={**os.environ, "WISP_LOG": "info"})
        deadline = time.time() + 15
        while "wisp is serving" not in self.log():
            if self.proc.poll() is not None or time.time() > deadline:
                fail("start", f"node {k} did not start", log=self.log()[-2000:])
            time.sleep(0.05)

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


class Redis:
    def __init__(self):
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", HUB, "--port", "6379", "--save", "",
             "--appendonly", "no", "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while run("redis-cli", "-h", HUB, "ping", check=False,
                  capture_output=True).stdout.strip() != b"PONG":
            if time.time() > deadline:
                fail("start", "redis-server did not answer")
            time.sleep(0.05)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def http(method, url, token=None, body=None, ctype=None, headers=()):
    """The status, headers and body of one request (redirects not followed)."""
    req = urllib.request.Request(url, method=method, data=body)
    for k, v in headers:
        req.add_header(k, v)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if ctype:
        req.add_header("Content-Type", ctype)

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **k):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(req, timeout=20) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def api(node, path, token):
    status, _, body = http("GET", node.url + path, token)
    return status, (json.loads(body) if body else None)


def whep(bins, *args, timeout=60):
    """Runs whep-client; the JSON summary of its last stdout line (or None) and its exit."""
    p = subprocess.run([os.path.join(bins, "whep-client"), *args], capture_output=True,
                       text=True, timeout=timeout)
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    summary = json.loads(lines[-1]) if lines else None
    return summary, p.returncode, p.stderr[-1500:]


def token(bins, work, sessions, scope):
    return run(os.path.join(bins, "wisp"), "token", "--sessions", sessions, "--scope", scope,
               "--ttl", "3600", "--jwt-secret-file", os.path.join(work, "secret"),
               capture_output=True, text=True).stdout.strip()


def create(node, admin, name, video=None):
    body = {"name": name, "inputs": [{"url": "demo"}]}
    if video:
        body["video"] = video
    return http("POST", node.url + "/api/sessions", admin, json.dumps(body).encode(),
                "application/json")


def viewers_of(node, admin, name):
    """Viewers of session `name` on each node, from the cluster's list (relays included),
    as of the nodes' last heartbeats."""
    time.sleep(1.2)
    counts = {f"http://10.77.0.{k}:8080": 0 for k in (1, 2, 3)}
    for s in api(node, "/api/sessions", admin)[1] or []:
        if s.get("name") == name:
            counts[s["node"]] = counts.get(s["node"], 0) + s.get("viewers", 0)
    return counts


def eventually(secs, f):
    deadline = time.time() + secs
    while time.time() < deadline:
        v = f()
        if v:
            return v
        time.sleep(0.2)
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", action="store_true")
    ap.add_argument("--profile", default="debug")
    args = ap.parse_args()
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    bins = os.path.join(target, args.profile)
    work = tempfile.mkdtemp(prefix="wisp-cluster-")
    with open(os.path.join(work, "secret"), "w") as f:
        f.write(os.urandom(24).hex())
    net = Net()
    redis = None
    nodes = []
    try:
        hosts = [net.host(k) for k in (1, 2, 3)]
        redis = Redis()
        a = Node(1, hosts[0], work, bins, 1.0)
        b = Node(2, hosts[1], work, bins, 2.0)
        c = Node(3, hosts[2], work, bins, 1.5, ["--relay"])
        nodes = [a, b, c]
        admin = token(bins, work, "*", "admin")
        viewer = token(bins, work, "*", "view playback chat publish")
        time.sleep(2.2)  # two heartbeats: every node sees the others' room
        if args.bench:
            bench(bins, a, b, c, admin, viewer)
        else:
            check(bins, work, redis, a, b, c, admin, viewer)
    finally:
        for n in nodes:
            n.stop()
        if redis:
            redis.stop()
        net.close()


def check(bins, work, redis, a, b, c, admin, viewer):
    # placement: B has the most room (2 cores).
    status, _, body = create(a, admin, "film", {"width": 640, "height": 360})
    answer = json.loads(body or b"{}")
    if status != 201 or not answer.get("whep_url", "").startswith(b.url):
        fail("placement", "the session did not land on B", status=status, answer=answer)
    say("placement", through=a.url, landed=answer["whep_url"])

    # redirect: a viewer at A plays from B; PATCH (trickle) and DELETE go to B.
    s, code, err = whep(bins, "play", f"{a.url}/whep/film", "--token", viewer, "--frames",
                        "30", "--trickle", "--json")
    if code != 0 or not (s or {}).get("resource", "").startswith(b.url) or \
            s.get("trickle_status") != 204 or s.get("delete_status") != 200:
        fail("redirect", "the viewer did not play from B through the redirect", summary=s,
             stderr=err)
    say("redirect", resource=s["resource"], frames=s["video_frames"],
        trickle_status=s["trickle_status"], delete_status=s["delete_status"],
        first_frame_ms=s["first_frame_ms"])

    # edge-live: an RTMP publish on B, watched on the edge C.
    publisher = subprocess.Popen(
        ["ffmpeg", "-loglevel", "error", "-re", "-f", "lavfi", "-i",
         "testsrc2=size=640x360:rate=30", "-t", "40", "-c:v", "libx264", "-preset",
         "ultrafast", "-g", "30", "-pix_fmt", "yuv420p", "-f", "flv",
         f"rtmp://10.77.0.2:1935/live/cam?token={viewer}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        live = eventually(20, lambda: (api(b, "/api/sessions/cam", admin)[1] or {})
                          .get("video"))
        if not live:
            fail("edge-live", "the RTMP publish did not go live on B")
        s, code, err = whep(bins, "play", f"{c.url}/whep/cam", "--token", viewer,
                            "--frames", "30", "--json")
        if code != 0 or not (s or {}).get("resource", "").startswith(c.url):
            fail("edge-live", "the live session did not play on the edge", summary=s,
                 stderr=err)
        if s["first_frame_ms"] > 1000:
            fail("edge-live", "first frame through the edge later than 1 s", summary=s)
        time.sleep(1.2)  # a heartbeat: the edge lists its relay
        relayed = [x for x in api(a, "/api/sessions", admin)[1] or []
                   if x.get("name") == "cam" and x.get("node") == c.url]
        if not relayed or relayed[0].get("relayed_from") != b.url:
            fail("edge-live", "the cluster's list does not show C's relay of cam from B",
                 listed=relayed)
        say("edge-live", resource=s["resource"], first_frame_ms=s["first_frame_ms"],
            ingest=relayed[0].get("ingest"), relayed_from=relayed[0].get("relayed_from"))
    finally:
        publisher.kill()
        publisher.wait()

    # edge-seek: a viewer on B listens; a viewer on C seeks; B's viewer sees the session move.
    listener = subprocess.Popen(
        [os.path.join(bins, "whep-client"), "control", "--token", viewer, "--listen", "12",
         f"{b.url}/whep/film", "status"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    seek = subprocess.run(
        [os.path.join(bins, "whep-client"), "control", "--token", viewer, "--listen", "1",
         f"{c.url}/whep/film", "seek", "20"], capture_output=True, text=True, timeout=40)
    out, _ = listener.communicate(timeout=40)
    heard = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    moved = [e for e in heard if e.get("event") in ("state", "position")
             and (e.get("position") or 0) >= 19.5]
    if seek.returncode != 0 or '"ok":true' not in seek.stdout or not moved:
        fail("edge-seek", "the edge's seek did not move the session for B's viewer",
             seek=seek.stdout[-800:], seek_err=seek.stderr[-800:], heard=heard[-5:])
    position = (api(b, "/api/sessions/film", admin)[1] or {}).get("position")
    reply = next(l for l in seek.stdout.splitlines() if '"ok"' in l)
    say("edge-seek", seek_reply=reply, b_viewer_saw=moved[0],
        b_position=position)

    # conformance: the suite at A for B's film follows the 307s and passes.
    report = os.path.join(os.path.dirname(bins), "cluster-conformance.json")
    p = subprocess.run(
        [os.path.join(bins, "wisp-conformance"), "--whep", f"{a.url}/whep/film", "--token",
         viewer, "--format", "json", "--output", report,
         # Plain HTTP on the test's own hosts: TLS is the deployment's (a proxy in front).
         "--skip", "WHxP-HTTPS"], capture_output=True, text=True, timeout=300)
    with open(report) as f:
        r = json.load(f)
    redirect = [x for x in r["cases"] if x["id"] == "WHxP-REDIRECT"]
    if p.returncode != 0 or not redirect or redirect[0]["result"] != "pass":
        fail("conformance", "the suite did not pass through the cluster's redirects",
             summary=r["summary"], redirect=redirect,
             failed=[(x["id"], x["detail"]) for x in r["cases"] if x["result"] == "fail"])
    say("conformance", summary=r["summary"], redirect=redirect[0]["detail"])

    # spread: 300 viewers of a session A holds, all entering at A. (Made on A itself, past
    # placement, as a node does when placement sends it a session.)
    status, _, body = http("POST", a.url + "/api/sessions", admin, json.dumps(
        {"name": "crowd", "inputs": [{"url": "demo"}],
         "video": {"width": 320, "height": 180, "fps": 15, "bitrate": 150000}}).encode(),
        "application/json", [("Wisp-Forwarded", "1")])
    if status != 201:
        fail("spread", "could not make the crowd session on A", status=status, body=str(body))
    load = subprocess.Popen(
        [os.path.join(bins, "whep-client"), "load", f"{a.url}/whep/crowd", "--token", viewer,
         "--viewers", "300", "--duration", "40", "--ramp", "15", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(30)
    counts = viewers_of(a, admin, "crowd")
    out, err = load.communicate(timeout=120)
    result = json.loads(out.splitlines()[-1]) if out.strip() else {}
    # A keeps relay_above (100, and the two relays' pulls), give or take viewers that came
    # in the same heartbeat; the rest go to the edge with the most room at the time: B (2
    # cores) first, then C (1.5) once B's room fell to C's.
    owner, on_b, on_c = counts[a.url], counts[b.url], counts[c.url]
    spread = owner <= 115 and on_b >= on_c > 0 and owner + on_b + on_c >= 280
    if result.get("with_video", 0) < 290 or not spread:
        fail("spread", "300 viewers were not spread over the nodes by load", viewers=counts,
             load=result, stderr=err[-1000:])
    say("spread", viewers_per_node=counts, with_video=result["with_video"],
        failed=result["failed"], first_frame_ms_p50=result["first_frame_ms_p50"])

    # redis: stopped, the nodes keep serving; started, they register again.
    redis.stop()
    s, code, err = whep(bins, "play", f"{b.url}/whep/film", "--token", viewer, "--frames",
                        "20", "--json")
    if code != 0:
        fail("redis", "B stopped serving its session while Redis was down", stderr=err)
    down_status = http("POST", f"{a.url}/whep/film", viewer, b"v=0\r\n", "application/sdp")[0]
    redis.start()

    def registered():
        keys = run("redis-cli", "-h", HUB, "--scan", "--pattern", "wisp:node:*",
                   capture_output=True, text=True).stdout.split()
        return len(keys) == 3 and keys
    back = eventually(10, registered)
    # And the directory works again: A sends a viewer of B's film to B.
    redirect = http("POST", f"{a.url}/whep/film", viewer, b"v=0\r\n", "application/sdp")
    if not back or down_status != 503 or redirect[0] != 307:
        fail("redis", "the nodes did not register again", post_while_down=down_status,
             registered=back, post_after=redirect[0])
    say("redis", served_while_down=s["video_frames"], post_elsewhere_while_down=down_status,
        registered_after=sorted(back), post_elsewhere_after=redirect[0])

    # failover: B dies; film (B's) is made again elsewhere; a viewer at A plays it again.
    time.sleep(1.5)  # a beat with the film's position
    b.kill()
    killed = time.time()
    s, code, err = whep(bins, "play", f"{a.url}/whep/film", "--token", viewer, "--frames",
                        "30", "--wait", "20", "--json")
    back_after = time.time() - killed
    if code != 0 or (s or {}).get("resource", "").startswith(b.url):
        fail("failover", "the film did not play again after its node died", summary=s,
             stderr=err)
    played_after = back_after - (s.get("seconds") or 0) + s["first_frame_ms"] / 1000
    if played_after > 10:
        fail("failover", "played again later than 10 s after the kill",
             played_after_s=round(played_after, 2))
    say("failover", resource=s["resource"], played_again_after_s=round(played_after, 2))


def cpu_seconds(pid):
    """A process's user and system CPU time so far, seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench(bins, a, b, c, admin, viewer):
    status, _, body = create(a, admin, "bench", {"width": 640, "height": 360})
    owner_url = json.loads(body)["whep_url"].split("/whep/")[0]
    owner = next(n for n in (a, b, c) if n.url == owner_url)
    entry = next(n for n in (a, b) if n.url != owner_url)
    # Start the session's transcoder, so the runs measure the path, not its start.
    whep(bins, "play", f"{owner.url}/whep/bench", "--token", viewer, "--frames", "10")

    def first_frames(urls):
        """First-frame times (POST sent → first complete frame), one viewer at a time."""
        times = []
        for url in urls:
            s, code, err = whep(bins, "play", url, "--token", viewer, "--frames", "5",
                                "--json")
            if code != 0 or not s:
                fail("bench", f"a viewer of {url} did not play", stderr=err)
            times.append(s["first_frame_ms"])
        times.sort()
        return {"p50_ms": times[len(times) // 2], "p95_ms": times[int(len(times) * 0.95)],
                "min_ms": times[0], "max_ms": times[-1]}

    figures = {
        "direct": first_frames([f"{owner.url}/whep/bench"] * 20),
        "redirect": first_frames([f"{entry.url}/whep/bench"] * 20),
        # The edge's relay of the session is running (started by the first of these).
        "edge_warm": first_frames([f"{c.url}/whep/bench"] * 20),
    }
    # Each viewer the first of its edge relay: 20 sessions on the owner, one at a time, each
    # playing there, then watched on C (which starts its relay), then removed (its
    # transcoder and the relay with it), so that one runs at a time.
    cold = []
    for i in range(20):
        name = f"cold{i}"
        http("POST", owner.url + "/api/sessions", admin, json.dumps(
            {"name": name, "inputs": [{"url": "demo"}],
             "video": {"width": 320, "height": 180}}).encode(),
            "application/json", [("Wisp-Forwarded", "1")])
        whep(bins, "play", f"{owner.url}/whep/{name}", "--token", viewer, "--frames", "5")
        cold.append(first_frames([f"{c.url}/whep/{name}"])["p50_ms"])
        http("DELETE", f"{owner.url}/api/sessions/{name}", admin)
    cold.sort()
    figures["edge_cold"] = {"p50_ms": cold[len(cold) // 2], "p95_ms": cold[int(len(cold) * 0.95)],
                            "min_ms": cold[0], "max_ms": cold[-1]}
    say("bench-first-frame", session_on=owner.url, entry=entry.url, edge=c.url, **figures)

    # The cluster under 300 viewers (A holds the session, relay_above 100): each node's CPU
    # per viewer-second over a steady 20 s window, and what that makes a node and the
    # cluster carry.
    http("POST", a.url + "/api/sessions", admin, json.dumps(
        {"name": "crowd", "inputs": [{"url": "demo"}],
         "video": {"width": 640, "height": 360}}).encode(),
        "application/json", [("Wisp-Forwarded", "1")])
    load = subprocess.Popen(
        [os.path.join(bins, "whep-client"), "load", f"{a.url}/whep/crowd", "--token", viewer,
         "--viewers", "300", "--duration", "45", "--ramp", "20", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    time.sleep(20)
    before = {n.url: cpu_seconds(n.proc.pid) for n in (a, b, c)}
    t0 = time.time()
    time.sleep(20)
    window = time.time() - t0
    after = {n.url: cpu_seconds(n.proc.pid) for n in (a, b, c)}
    counts = viewers_of(a, admin, "crowd")
    out, _ = load.communicate(timeout=120)
    result = json.loads(out.splitlines()[-1]) if out.strip() else {}
    per_node = {}
    for url in counts:
        cores = (after[url] - before[url]) / window
        per_node[url] = {
            "viewers": counts[url], "cores": round(cores, 3),
            "ms_per_viewer_second": round(cores * 1000 / counts[url], 3) if counts[url] else None,
        }
    say("bench-cluster", per_node=per_node, with_video=result.get("with_video"),
        lost_packets=result.get("lost_packets"), fps_mean=result.get("fps_mean"))


if __name__ == "__main__":
    main()
