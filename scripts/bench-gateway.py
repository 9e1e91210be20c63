#!/usr/bin/env python3
"""Load runs of the gateway (release build), printing figures for docs/benchmarks.md.

  fanout: the demo session (1280x720@30, ~2 Mb/s H.264 + Opus) to N `whep-client load` viewers;
          the gateway's CPU seconds per viewer-second and RSS per viewer over a steady window
          (the transcoder is another process and is not counted; whep-client runs on the same
          2 cores and competes with the gateway, so the figures are upper bounds).
  ttff:   POST → first complete video frame at whep-client, warm (transcoder running) and
          cold (the first viewer starts the transcoder).
  seek:   `seek` sent on the control channel → first complete frame of the new position at
          whep-client, for a 30 s 1920x1080 H.264 file (GOP 2 s) played at 1280x720. The file
          shows its whole second as the grey level of a box; every measured frame is decoded
          (ffmpeg CLI) to check that it shows the target.

  live:   an aiortc WHIP publisher (640x360@30 H.264, keyframe every 4 s, keyframe requests
          ignored, like OBS or FFmpeg) and one viewer watching throughout; --runs viewers join
          at random points of the GOP. Per joining viewer: time to first frame, and its latency
          5-6 s after joining next to the long-standing viewer's for the same frames (frames
          matched to the publisher's by their last bytes). Latency is taken two ways: arrival
          (frame complete at whep-client − publisher sent it) and playout, for a player that
          shows each frame at its RTP time plus the largest arrival offset of the last 2 s (a
          jitter buffer at its minimum delay; a backlog sent in a burst with its original
          timestamps would keep its delay there), and how long after joining the playout
          latency came within 100 ms of the steady viewer's. Also the gateway's own
          forwarding latency (packet read from the publisher's datagram → sent to a viewer) from
          its /metrics histogram. Needs the interop venv (scripts/interop makes it).

  live-fanout: as fanout, for a live session fed by an aiortc WHIP publisher that sends a
          1280x720@30 ~2 Mb/s H.264 file as it is (no encoding on these cores) plus Opus.

  ingest-cpu: CPU of the gateway's transcoder for a 1080p30 RTMP publish scaled to 720p,
          next to the ffmpeg CLI doing the same transcode of the same stream at the same time.

  ingest-latency: what the RTMP ingest path adds, from the gateway's /metrics histogram
          wisp_ingest_latency_seconds (a video frame's last byte read from the publisher → its
          last RTP packet sent to a viewer; the transcoder stamps what it writes with when its
          input reached the gateway), for one viewer over a --window-second steady window, with:
          transcode (1080p30 High, 2 B-frames → 720p), transcode without B-frames, and copy
          (720p30 constrained baseline, `video=copy`). The publisher remuxes a pre-encoded file
          in real time (`ffmpeg -re -c copy -f flv`). Quantiles are interpolated within the
          histogram's buckets (5 ms wide between 100 and 150 ms, 1-5 ms below 30 ms).

  hls:    the default HLS ladder of the demo (`wisp-transcoder egress hls`: the 1280x720 source
          copied, 360p and 180p encoded with x264, AAC) next to the ffmpeg CLI making the same
          ladder from the same stream in the same run: CPU over a --window-second steady
          window. The CLI reads a recording of the ring (`egress record`, Matroska) in real time
          and has the egress's settings (one decode, scale, libx264 veryfast/zerolatency/main at
          the same bitrates with keyframes where the source has them, one AAC encode shared by
          the renditions as an audio group, fMP4 segments of 2 s). Also the latency from a
          frame entering the ring to its segment being listed in the 360p playlist (polled
          every 10 ms): a frame's entry is the egress's media start (its `started` event) plus
          the frame's media time (the segment's PROGRAM-DATE-TIME relative to the first).
          The ring is written by a standalone `wisp-transcoder -i demo` (not counted).

  layer-switch: a VOD session as a ladder (720p, 360p, 180p from the demo); one whep-client
          viewer pins 180p and 720p in turn every --gap seconds (`--cycle-layers`): the time
          from each pin request to the first complete frame at that layer's size, p50/p95.
          The gateway moves the viewer at that layer's next keyframe and asks the transcoder
          for one (throttled to one per 500 ms per session).
  layers-fanout: as fanout, for that ladder session (each viewer choosing its layer from its
          bandwidth estimate, with transport-wide CC and str0m's pacer) next to the demo's
          single layer, in separate gateways: the gateway's CPU per viewer-second. The ladder's
          transcoder (not counted) takes more of the same 2 cores.

Usage: scripts/bench-gateway.py [fanout|ttff|seek|live|live-fanout|ingest-cpu|ingest-latency|hls|layer-switch|layers-fanout|all] [--viewers 50,100,200] [--window 20]
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
import urllib.error
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
    def __init__(self, idle_timeout=60, config="", rtmp="off"):
        self.dir = tempfile.mkdtemp(prefix="wisp-bench-")
        self.secret = os.path.join(self.dir, "secret")
        with open(self.secret, "w") as f:
            f.write(os.urandom(32).hex())
        conf = os.path.join(self.dir, "wisp.toml")
        with open(conf, "w") as f:
            f.write(config)
        self.base = "http://127.0.0.1:18180"
        self.log = open(os.path.join(self.dir, "wisp.log"), "w")
        self.proc = subprocess.Popen(
            [f"{BIN}/wisp", "serve", "--http", "127.0.0.1:18180", "--rtc", "127.0.0.1:18543",
             "--rtmp", rtmp, "--srt", "off",
             "--jwt-secret-file", self.secret, "--state-dir", self.dir, "--config", conf,
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

    def session(self, name="demo"):
        req = urllib.request.Request(self.base + f"/api/sessions/{name}",
                                     headers={"Authorization": "Bearer " + self.admin})
        return json.load(urllib.request.urlopen(req, timeout=5))

    def wait_live(self, name, seconds=20):
        """Waits until session `name` is live (its publisher's media flows); False if not."""
        for _ in range(int(seconds / 0.2)):
            time.sleep(0.2)
            try:
                if self.session(name).get("state") == "live":
                    return True
            except urllib.error.HTTPError:
                pass  # not published yet
        return False

    def close(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=20)
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)


def measure_fanout(gw, n, window, url, token):
    """N `whep-client load` viewers of `url` (one viewer already watches): the gateway's CPU and
    RSS over a steady window."""
    base_rss = rss_mib(gw.proc.pid)
    ramp = 50.0
    duration = int(n / ramp) + 5 + window + 5
    load = subprocess.Popen([f"{BIN}/whep-client", "load", url, "--token", token,
                             "--viewers", str(n), "--duration", str(duration),
                             "--ramp", str(ramp), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    time.sleep(n / ramp + 5)  # ramp up, then settle
    m0 = counters(gw)
    h0 = histogram(metrics_text(gw), "wisp_forward_latency_seconds")
    l0 = cpu_seconds(load.pid)
    c0, t0 = cpu_seconds(gw.proc.pid), time.monotonic()
    rss_samples = []
    while time.monotonic() - t0 < window:
        time.sleep(1)
        rss_samples.append(rss_mib(gw.proc.pid))
    c1, t1 = cpu_seconds(gw.proc.pid), time.monotonic()
    l1 = cpu_seconds(load.pid)
    m1 = counters(gw)
    h1 = histogram(metrics_text(gw), "wisp_forward_latency_seconds")
    # The window's packets only: the difference of the cumulative buckets.
    window_buckets = [(le, n1 - n0) for (le, n1), (_, n0) in zip(h1, h0)] if h0 else h1
    out, _ = load.communicate(timeout=duration + 60)
    summary = json.loads(out.strip().splitlines()[-1])
    viewer_seconds = (n + 1) * (t1 - t0)
    rss = statistics.median(rss_samples)
    sent = m1["wisp_packets_out_total"] - m0["wisp_packets_out_total"]
    return {
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
        "packets_per_viewer_s": round(sent / viewer_seconds, 1),
        "forward_latency_ms_p50": interpolated_quantile(window_buckets, 0.5),
        "forward_latency_ms_p99": interpolated_quantile(window_buckets, 0.99),
        "first_frame_ms_p50": summary.get("first_frame_ms_p50"),
        "first_frame_ms_max": summary.get("first_frame_ms_max"),
        # The load tool runs on the same 2 cores: 200 % would be all of them.
        "load_tool_cpu_percent": round(100 * (l1 - l0) / (t1 - t0), 1),
    }


def metrics_text(gw):
    """The gateway's /metrics page."""
    return urllib.request.urlopen(gw.base + "/metrics", timeout=5).read().decode()


def counters(gw):
    """The gateway's /metrics counters (`*_total`), by name."""
    out = {}
    for line in metrics_text(gw).splitlines():
        name, _, value = line.partition(" ")
        if name.endswith("_total") and value:
            out[name] = float(value)
    return out


def watch(url, token):
    """A viewer that stays (its frames are not looked at)."""
    return subprocess.Popen([f"{BIN}/whep-client", "play", url, "--token", token, "--frames",
                             "100000000", "--timeout", "100000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def fanout_run(n, window, name="demo", config=""):
    """One fanout row: a gateway (with `config`), one viewer of session `name` first (so its
    transcoder runs and the baseline holds a live session), then `n` more measured."""
    gw = Gateway(config=config)
    token = gw.mint(name, "view")
    url = gw.base + f"/whep/{name}"
    warm = watch(url, token)
    time.sleep(3)
    row = {"session": name, **measure_fanout(gw, n, window, url, token)}
    if name != "demo":
        row["viewer_layers"] = sorted({v["layer"] for v in gw.session(name).get("viewer_layers", [])})
    warm.terminate()
    warm.wait()
    gw.close()
    print(json.dumps(row), flush=True)
    return row


def fanout(viewers_list, window):
    return [fanout_run(n, window) for n in viewers_list]


def live_fanout(viewers_list, window):
    """As `fanout`, for a live session: an aiortc publisher sends a 1280x720@30 H.264 file
    (~2 Mb/s constant bitrate, GOP 2 s, made here with the ffmpeg CLI) as it is, without
    encoding it, plus its generated Opus tone."""
    if not os.path.exists(VENV_PY):
        sys.exit(f"{VENV_PY} missing: run scripts/interop once (it makes the aiortc venv)")
    media = tempfile.mkdtemp(prefix="wisp-bench-media-")
    clip = os.path.join(media, "clip.ts")
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc2=s=1280x720:r=30:d=20", "-vf", "noise=alls=12:allf=t",
                    "-c:v", "libx264", "-profile:v", "baseline", "-preset", "veryfast",
                    "-b:v", "2M", "-minrate", "2M", "-maxrate", "2M", "-bufsize", "1M",
                    "-x264-params", "nal-hrd=cbr", "-g", "60", "-pix_fmt", "yuv420p", clip],
                   check=True)
    # Longer than any run (the publisher sends it once: see aiortc_whip.py --file).
    path = os.path.join(media, "live-2mbps.ts")
    seconds = 20 * (1 + (max(viewers_list) // 50 + 10 + window + 20) // 20)
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-stream_loop", str(seconds // 20 - 1),
                    "-i", clip, "-c", "copy", path], check=True)
    rows = []
    for n in viewers_list:
        gw = Gateway(config="demo = false\n")
        name = "bench-fan"
        token = gw.mint(name, "view publish")
        publisher = subprocess.Popen(
            [VENV_PY, os.path.join(ROOT, "interop", "aiortc_whip.py"), f"{gw.base}/whip/{name}",
             token, "0", "--file", path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"{gw.base}/whep/{name}"
        gw.wait_live(name)
        warm = watch(url, token)
        time.sleep(3)
        row = measure_fanout(gw, n, window, url, token)
        row["ingest_bitrate"] = gw.session(name).get("ingest_bitrate")
        warm.terminate()
        warm.wait()
        # aiortc's media-player thread can keep it from exiting on SIGTERM (and its memory
        # then grows without bound): kill it if it does not go.
        publisher.terminate()
        try:
            publisher.wait(timeout=5)
        except subprocess.TimeoutExpired:
            publisher.kill()
            publisher.wait()
        gw.close()
        rows.append(row)
        print(json.dumps(row), flush=True)
    shutil.rmtree(media, ignore_errors=True)
    return rows


def first_frame(gw):
    out = subprocess.run([f"{BIN}/whep-client", "play", gw.base + "/whep/demo", "--token", gw.token,
                          "--frames", "1", "--timeout", "20", "--json"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["first_frame_ms"]


def pct(values, p):
    if not values:
        return None
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


def seek_source():
    """The seek benchmark's input, made once (about 30 s of ffmpeg): testsrc2 with noise at
    8 Mb/s, GOP 60 (2 s) at 30 fps, AAC audio; a 240x240 box at the top left whose luma is
    16 + 7 × the whole second."""
    path = os.path.join(os.path.dirname(BIN), "bench-seek-1080p-gop2s.mp4")
    if os.path.exists(path):
        return path
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=30",
         "-f", "lavfi", "-i", "color=black:s=240x240:r=30,format=gray,geq=lum='16+7*floor(T)'",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
         "-filter_complex",
         "[0:v]noise=alls=12:allf=t[n];[n][1:v]overlay=0:0:shortest=1,format=yuv420p[v]",
         "-map", "[v]", "-map", "2:a", "-t", "30",
         "-c:v", "libx264", "-preset", "veryfast", "-b:v", "8M",
         "-g", "60", "-keyint_min", "60", "-sc_threshold", "0", "-c:a", "aac", path + ".part.mp4"],
        check=True)
    os.rename(path + ".part.mp4", path)
    return path


def box_second(h264):
    """The whole second a keyframe of the seek source shows (its box, scaled to 720p)."""
    gray = subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-f", "h264", "-i", h264, "-frames:v", "1",
         "-vf", "crop=80:80:40:40,format=gray", "-f", "rawvideo", "-"],
        capture_output=True, check=True).stdout
    if not gray:
        return None
    return round((sum(gray) / len(gray) - 16) / 7)


def seek(count, gap):
    src = seek_source()
    gw = Gateway(config=f'[[sessions]]\nname = "film"\ninputs = [{{ url = "{src}" }}]\n'
                        'video = { width = 1280, height = 720 }\n')
    frames = os.path.join(gw.dir, "keyframes")
    out = subprocess.run(
        [f"{BIN}/whep-client", "seeks", gw.base + "/whep/film",
         "--token", gw.mint("film", "view playback"), "--count", str(count), "--gap", str(gap),
         "--keyframes", frames],
        capture_output=True, text=True)
    lines = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]
    if out.returncode != 0 or not lines:
        gw.close()
        sys.exit(f"whep-client seeks failed ({out.returncode}): {out.stderr.strip()}")
    verified, reply, state, mismatched = [], [], [], []
    for s in lines[:-1]:
        want = int(s["target"])
        reply.append(s["reply_ms"])
        state.append(s["state_ms"])
        # The first keyframe after the send that shows the target's second.
        seconds = [box_second(f) for f in s["keyframe_files"]]
        shown = next((ms for ms, sec in zip(s["keyframes_ms"], seconds) if sec == want), None)
        if shown is None or shown != s["shown_ms"]:
            mismatched.append({"seek": s["seek"], "target": s["target"], "by_content": shown,
                               "after_state": s["shown_ms"], "seconds": seconds})
        if shown is not None:
            verified.append(shown)
    gw.close()
    result = {
        "seeks": len(lines) - 1,
        "verified": len(verified),
        "mismatched": mismatched,
        "shown_ms": {"p50": pct(verified, 50), "p95": pct(verified, 95),
                     "min": min(verified, default=None), "max": max(verified, default=None)},
        "reply_ms_p50": pct([r for r in reply if r is not None], 50),
        "state_event_ms_p50": pct([s for s in state if s is not None], 50),
        "all_shown_ms": verified,
    }
    print(json.dumps(result), flush=True)
    return result


VENV_PY = os.path.join(os.path.dirname(BIN), "interop-venv", "bin", "python")


def read_log(path):
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except ValueError:
                pass  # the line a killed process was writing
    return rows


def playout(frames, memory_us=2_000_000):
    """Playout times (µs) of a viewer's frames for a player that shows each frame at its RTP
    time plus the largest arrival offset seen over the last `memory_us` (a jitter buffer at
    its minimum delay, forgetting old jitter after a while)."""
    out, window = [], []
    first = frames[0]["rtp_time"] if frames else 0
    for f in frames:
        media = (f["rtp_time"] - first) * 1000 // 90
        window.append((f["at_us"], f["at_us"] - media))
        while window[0][0] < f["at_us"] - memory_us:
            window.pop(0)
        out.append(max(o for _, o in window) + media)
    return out


def latencies(frames, sent):
    """(at_us, arrival latency ms, playout latency ms) per frame matched to the publisher's."""
    rows = []
    for f, shown in zip(frames, playout(frames)):
        s = sent.get(f["tail"])
        if s is not None:
            rows.append((f["at_us"], (f["at_us"] - s) / 1000, (shown - s) / 1000))
    return rows


def histogram_quantile(text, name, q):
    """The upper bound of the bucket holding quantile q of a Prometheus histogram."""
    buckets = []
    for line in text.splitlines():
        if line.startswith(name + "_bucket"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), int(line.rsplit(" ", 1)[1])))
    total = buckets[-1][1] if buckets else 0
    for le, n in buckets:
        if total and n >= q * total:
            return le * 1000, total
    return None, total


def live(runs):
    if not os.path.exists(VENV_PY):
        sys.exit(f"{VENV_PY} missing: run scripts/interop once (it makes the aiortc venv)")
    import random

    gw = Gateway()
    name = "bench-live"
    url = f"{gw.base}/whep/{name}"
    view = gw.mint(name, "view")
    pub_log = os.path.join(gw.dir, "publisher.jsonl")
    publisher = subprocess.Popen(
        [VENV_PY, os.path.join(ROOT, "interop", "aiortc_whip.py"), f"{gw.base}/whip/{name}",
         gw.mint(name, "publish"), "0", "--codec", "h264", "--gop-seconds", "4", "--ignore-pli",
         "--frame-log", pub_log, "--noise-rows", "16"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(3)
    base_log = os.path.join(gw.dir, "steady.jsonl")
    steady = subprocess.Popen([f"{BIN}/whep-client", "play", url, "--token", view, "--frames",
                               "100000000", "--timeout", "100000", "--frame-log", base_log],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(5)
    joins = []
    for i in range(runs):
        time.sleep(random.uniform(0.5, 4.5))
        log = os.path.join(gw.dir, f"join-{i}.jsonl")
        out = subprocess.run([f"{BIN}/whep-client", "play", url, "--token", view, "--frames", "300",
                              "--timeout", "20", "--json", "--frame-log", log],
                             capture_output=True, text=True)
        summary = json.loads(out.stdout.strip().splitlines()[-1])
        joins.append((log, summary))
    metrics = metrics_text(gw)
    steady.terminate()
    steady.wait()
    publisher.terminate()
    publisher.wait()
    sent_frames = read_log(pub_log)
    sent = {}
    for f in sent_frames:
        sent.setdefault(f["tail"], f["at_us"])
    repeated = len(sent_frames) - len(sent)
    keyframes = [f["at_us"] for f in sent_frames if f["keyframe"]]
    gops = [(b - a) / 1e6 for a, b in zip(keyframes, keyframes[1:])]
    base = latencies(read_log(base_log), sent)
    rows, unmatched = [], 0
    for log, summary in joins:
        frames = read_log(log)
        lat = latencies(frames, sent)
        unmatched += len(frames) - len(lat)
        if not lat or summary.get("first_frame_ms") is None:
            continue
        joined = frames[0]["at_us"] - summary["first_frame_ms"] * 1000
        window = (joined + 5_000_000, joined + 6_000_000)
        mine = [r for r in lat if window[0] <= r[0] < window[1]]
        theirs = [r for r in base if window[0] <= r[0] < window[1]]
        if not mine or not theirs:
            continue
        steady_ms = statistics.median(r[2] for r in theirs)
        settled = next((r[0] for r in lat if r[2] <= steady_ms + 100), None)
        rows.append({
            "first_frame_ms": summary["first_frame_ms"],
            "settled_ms": None if settled is None else round((settled - joined) / 1000),
            "backlog_ms": round(lat[0][1]),
            "arrival_ms": round(statistics.mean(r[1] for r in mine), 1),
            "playout_ms": round(statistics.mean(r[2] for r in mine), 1),
            "steady_arrival_ms": round(statistics.mean(r[1] for r in theirs), 1),
            "steady_playout_ms": round(statistics.mean(r[2] for r in theirs), 1),
        })
    gw.close()
    p50, count = histogram_quantile(metrics, "wisp_forward_latency_seconds", 0.5)
    p99, _ = histogram_quantile(metrics, "wisp_forward_latency_seconds", 0.99)
    ttffs = [r["first_frame_ms"] for r in rows]
    gap = [r["playout_ms"] - r["steady_playout_ms"] for r in rows]
    settled = [r["settled_ms"] for r in rows if r["settled_ms"] is not None]
    result = {
        "publisher_gop_s": round(statistics.median(gops), 2) if gops else None,
        "joins": len(rows),
        "unmatched_frames": unmatched,
        "publisher_frames_with_repeated_tails": repeated,
        "first_frame_ms": {"p50": pct(ttffs, 50), "max": max(ttffs, default=None)},
        "playout_gap_after_5s_ms": {"p50": pct(gap, 50), "max": max(gap, default=None)},
        "settled_ms": {"p50": pct(settled, 50), "max": max(settled, default=None)},
        "forward_latency_ms": {"packets": count, "p50_le": p50, "p99_le": p99},
        "runs": rows,
    }
    print(json.dumps(result), flush=True)
    return result


def children(pid, comm):
    """Pids of `pid`'s child processes named `comm`."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        if name == comm and int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(d))
    return out


def ingest_cpu(window):
    """CPU of one 1080p30 RTMP ingest transcoded to 720p (the gateway's transcoder, with
    `[live] max_height = 720`) next to the ffmpeg CLI doing the same transcode of the same
    stream in the same run: both read the same pre-encoded 1080p30 H.264 High + AAC file in
    real time (the publisher only remuxes it: `ffmpeg -re -c copy -f flv rtmp://…`), and the
    CLI has the transcoder's settings (scale to 720p, libx264 veryfast/zerolatency/baseline,
    one thread, GOP 60, 2 Mb/s; libopus 96 kb/s). Over a `window`-second steady window."""
    src = os.path.join(tempfile.mkdtemp(prefix="wisp-ingest-cpu-"), "src.flv")
    seconds = window + 20
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc2=size=1920x1080:rate=30", "-f", "lavfi", "-i", "sine", "-t",
                    str(seconds), "-c:v", "libx264", "-preset", "veryfast", "-profile:v", "high",
                    "-bf", "2", "-g", "60", "-b:v", "6M", "-pix_fmt", "yuv420p", "-c:a", "aac",
                    "-f", "flv", src], check=True)
    gw = Gateway(config="[live]\nmax_height = 720\n", rtmp="127.0.0.1:19350")
    name = "ingest-cpu"
    url = f"rtmp://127.0.0.1:19350/live/{name}?token={gw.mint(name, 'publish')}"
    publisher = subprocess.Popen(["ffmpeg", "-loglevel", "error", "-re", "-i", src, "-c", "copy",
                                  "-f", "flv", url], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    x264 = ("keyint=60:min-keyint=60:scenecut=0:repeat-headers=1:bframes=0:aud=0:"
            "vbv-maxrate=2000:vbv-bufsize=2000")
    cli = subprocess.Popen(
        ["ffmpeg", "-loglevel", "error", "-nostdin", "-re", "-i", src, "-vf",
         "scale=w=-2:h=720:in_color_matrix=bt709:out_color_matrix=bt709:out_range=tv,"
         "fps=fps=30/1:round=near,format=yuv420p",
         "-c:v", "libx264", "-threads:v", "1", "-preset", "veryfast", "-tune", "zerolatency",
         "-profile:v", "baseline", "-level", "3.1", "-forced-idr", "1", "-b:v", "2000000",
         "-g", "60", "-x264-params", x264, "-af", "pan=stereo|c0=c0|c1=c0,aresample=48000",
         "-c:a", "libopus", "-b:a", "96000", "-frame_duration", "20", "-f", "null", "-"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(8)
    pids = children(gw.proc.pid, "wisp-transcoder")
    if len(pids) != 1:
        sys.exit(f"ingest-cpu: expected one transcoder, found {pids}")
    info = gw.session(name)
    t0 = (cpu_seconds(pids[0]), cpu_seconds(cli.pid), cpu_seconds(gw.proc.pid), time.time())
    time.sleep(window)
    t1 = (cpu_seconds(pids[0]), cpu_seconds(cli.pid), cpu_seconds(gw.proc.pid), time.time())
    wall = t1[3] - t0[3]
    wisp_cpu, cli_cpu, gw_cpu = ((b - a) / wall for a, b in zip(t0[:3], t1[:3]))
    for p in (publisher, cli):
        p.terminate()
        p.wait()
    gw.close()
    shutil.rmtree(os.path.dirname(src), ignore_errors=True)
    result = {
        "picture": f"{info.get('width')}x{info.get('height')}",
        "source": info.get("source"),
        "window_s": round(wall, 1),
        "transcoder_cpu_cores": round(wisp_cpu, 3),
        "ffmpeg_cli_cpu_cores": round(cli_cpu, 3),
        "gateway_cpu_cores": round(gw_cpu, 3),
        "ratio_ffmpeg_over_wisp": round(cli_cpu / wisp_cpu, 3) if wisp_cpu else None,
    }
    print(json.dumps(result), flush=True)
    return result


def hls_bench(window):
    """See the module's `hls`."""
    import datetime
    work = tempfile.mkdtemp(prefix="wisp-bench-hls-")
    ring = f"/dev/shm/wisp-bench-hls-{os.getpid()}"
    tracks = ["--video", "0:h264", "--audio", "1:opus"]
    source = subprocess.Popen(
        [f"{BIN}/wisp-transcoder", "-i", "demo", "--width", "1280", "--height", "720", "--fps",
         "30", "--control", "none", "--ring", ring, "--ring-size", str(64 << 20)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    recording = os.path.join(work, "ring.mkv")
    subprocess.run([f"{BIN}/wisp-transcoder", "egress", "--ring", ring, *tracks, "record",
                    "--format", "mkv", "--output", recording, "--max-seconds", str(window + 20)],
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=True)
    ours_dir = os.path.join(work, "wisp")
    ours = subprocess.Popen([f"{BIN}/wisp-transcoder", "egress", "--ring", ring, *tracks, "hls",
                             "--dir", ours_dir, "--fps", "30"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    started = json.loads(ours.stdout.readline())
    start_s = started["start_unix_ms"] / 1000
    cli_dir = os.path.join(work, "ffmpeg")
    os.makedirs(cli_dir)
    # The encoders' options, per encoded stream (stream 0 is copied and takes none).
    x264 = [a for v in ("v:1", "v:2") for a in (
        f"-preset:{v}", "veryfast", f"-tune:{v}", "zerolatency", f"-profile:{v}", "main",
        f"-force_key_frames:{v}", "expr:gte(t,n_forced*2)", f"-bf:{v}", "0")]
    cli = subprocess.Popen(
        ["ffmpeg", "-loglevel", "error", "-nostdin", "-re", "-i", recording, "-filter_complex",
         "[0:v]split=2[a][b];[a]scale=640:360:flags=bilinear[v1];[b]scale=320:180:flags=bilinear[v2]",
         "-map", "0:v", "-map", "[v1]", "-map", "[v2]", "-map", "0:a",
         "-c:v:0", "copy", "-c:v:1", "libx264", "-b:v:1", "691200", "-maxrate:v:1", "1036000",
         "-bufsize:v:1", "1382000", "-c:v:2", "libx264", "-b:v:2", "200000",
         "-maxrate:v:2", "300000", "-bufsize:v:2", "400000", *x264,
         "-c:a", "aac", "-b:a", "128000", "-ar", "48000", "-ac", "2",
         "-f", "hls", "-hls_time", "2", "-hls_list_size", "6", "-hls_segment_type", "fmp4",
         "-hls_flags", "delete_segments+temp_file+independent_segments",
         "-var_stream_map", "a:0,agroup:aud v:0,agroup:aud v:1,agroup:aud v:2,agroup:aud",
         "-master_pl_name", "index.m3u8", os.path.join(cli_dir, "%v", "index.m3u8")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    playlist = os.path.join(ours_dir, "360p", "index.m3u8")
    listed = {}  # segment name → (time first seen listed, PDT s, duration s)

    def poll():
        try:
            text = open(playlist).read()
        except OSError:
            return
        pdt = dur = None
        for line in text.splitlines():
            if line.startswith("#EXTINF:"):
                dur = float(line[8:].rstrip(","))
            elif line.startswith("#EXT-X-PROGRAM-DATE-TIME:"):
                pdt = datetime.datetime.strptime(line[25:], "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
            elif line.startswith("seg") and line not in listed:
                listed[line] = (time.time(), pdt, dur)

    warm_until = time.time() + 8
    while time.time() < warm_until:
        poll()
        time.sleep(0.01)
    t0 = (cpu_seconds(ours.pid), cpu_seconds(cli.pid), time.time())
    in_window = set()
    while time.time() < t0[2] + window:
        before = set(listed)
        poll()
        in_window |= set(listed) - before
        time.sleep(0.01)
    t1 = (cpu_seconds(ours.pid), cpu_seconds(cli.pid), time.time())
    wall = t1[2] - t0[2]
    ours_cpu, cli_cpu = ((b - a) / wall for a, b in zip(t0[:2], t1[:2]))
    ours.stdin.close()
    ours.wait(timeout=20)
    for p in (cli, source):
        p.terminate()
        p.wait()
    first_pdt = listed.get("seg0.m4s", (0, None, 0))[1]
    frame_latency, after_last = [], []
    for name in in_window:
        seen, pdt, dur = listed[name]
        if pdt is None or first_pdt is None:
            continue
        entered = start_s + (pdt - first_pdt)
        frames = round(dur * 30)
        frame_latency += [seen - (entered + k / 30) for k in range(frames)]
        after_last.append(seen - (entered + (frames - 1) / 30))
    try:
        os.unlink(ring)
    except OSError:
        pass
    if not os.environ.get("BENCH_KEEP"):
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "window_s": round(wall, 1),
        "egress_cpu_cores": round(ours_cpu, 3),
        "ffmpeg_cli_cpu_cores": round(cli_cpu, 3),
        "ratio_ffmpeg_over_wisp": round(cli_cpu / ours_cpu, 3) if ours_cpu else None,
        "segments": len(in_window),
        "frame_to_listed_p50_ms": round(pct(frame_latency, 50) * 1000, 1) if frame_latency else None,
        "frame_to_listed_p90_ms": round(pct(frame_latency, 90) * 1000, 1) if frame_latency else None,
        "last_frame_to_listed_p50_ms": round(pct(after_last, 50) * 1000, 1) if after_last else None,
    }
    print(json.dumps(result), flush=True)
    return result


def histogram(text, name):
    """A Prometheus histogram's (upper bound s, cumulative count) pairs."""
    out = []
    for line in text.splitlines():
        if line.startswith(name + "_bucket"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out.append((float("inf") if le == "+Inf" else float(le), int(line.rsplit(" ", 1)[1])))
    return out


def interpolated_quantile(buckets, q):
    """Quantile q (ms) of cumulative buckets, linear within the bucket that holds it."""
    total = buckets[-1][1] if buckets else 0
    if not total:
        return None
    lower, below = 0.0, 0
    for le, n in buckets:
        if n >= q * total:
            if le == float("inf"):
                return float("inf")
            inside = n - below
            frac = (q * total - below) / inside if inside else 1.0
            return round((lower + (le - lower) * frac) * 1000, 1)
        lower, below = le, n
    return None


def ingest_latency(window):
    """The RTMP ingest path's latency, transcoding and copying (see the module's header)."""
    work = tempfile.mkdtemp(prefix="wisp-ingest-latency-")
    seconds = window + 25
    cases = [
        ("transcode", "1920x1080", ["-profile:v", "high", "-bf", "2", "-b:v", "6M"], False),
        ("transcode, no B-frames", "1920x1080", ["-profile:v", "high", "-bf", "0", "-b:v", "6M"], False),
        ("copy", "1280x720", ["-profile:v", "baseline", "-b:v", "2500k"], True),
    ]
    results = []
    for label, size, x264, copy in cases:
        src = os.path.join(work, "src.flv")
        subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                        f"testsrc2=size={size}:rate=30", "-f", "lavfi", "-i", "sine", "-t",
                        str(seconds), "-c:v", "libx264", "-preset", "veryfast", *x264, "-g", "60",
                        "-pix_fmt", "yuv420p", "-c:a", "aac", "-f", "flv", src], check=True)
        gw = Gateway(config="[live]\nmax_height = 720\n", rtmp="127.0.0.1:19350")
        name = "ingest-latency"
        key = f"{name}?token={gw.mint(name, 'publish')}" + ("&video=copy" if copy else "")
        publisher = subprocess.Popen(["ffmpeg", "-loglevel", "error", "-re", "-i", src, "-c", "copy",
                                      "-f", "flv", f"rtmp://127.0.0.1:19350/live/{key}"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        gw.wait_live(name)
        viewer = subprocess.Popen([f"{BIN}/whep-client", "load", f"{gw.base}/whep/{name}",
                                   "--token", gw.mint(name, "view"), "--viewers", "1",
                                   "--duration", str(window + 15), "--json"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(10)
        before = histogram(metrics_text(gw), "wisp_ingest_latency_seconds")
        time.sleep(window)
        after = histogram(metrics_text(gw), "wisp_ingest_latency_seconds")
        info = gw.session(name)
        for p in (viewer, publisher):
            p.terminate()
            p.wait()
        gw.close()
        buckets = [(le, n - m) for (le, n), (_, m) in zip(after, before)]
        result = {
            "case": label,
            "source": info.get("source"),
            "picture": f"{info.get('width')}x{info.get('height')}",
            "frames": buckets[-1][1] if buckets else 0,
            "p50_ms": interpolated_quantile(buckets, 0.5),
            "p99_ms": interpolated_quantile(buckets, 0.99),
        }
        print(json.dumps(result), flush=True)
        results.append(result)
    shutil.rmtree(work, ignore_errors=True)
    return results


LADDER = ('[[sessions]]\nname = "ladder"\ninputs = [{ url = "demo" }]\n'
          'layers = [{ height = 720 }, { height = 360 }, { height = 180 }]\n')


def layer_switch(count, gap):
    gw = Gateway(config=LADDER)
    token = gw.mint("ladder", "view")
    frames = int((count + 2) * gap * 30)
    out = subprocess.run([f"{BIN}/whep-client", "play", gw.base + "/whep/ladder", "--token", token,
                          "--frames", str(frames), "--timeout", str(int((count + 4) * gap) + 20),
                          "--json", "--cycle-layers", "180p,720p", "--cycle-every", str(gap)],
                         capture_output=True, text=True)
    gw.close()
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    heights = {"180p": 180, "720p": 720}
    times = []
    for req in summary.get("layer_requests", []):
        want = heights[req["rid"]]
        later = [r for r in summary.get("sizes", []) if r["at_ms"] >= req["at_ms"]]
        hit = next((r for r in later if r["height"] == want), None)
        if hit:
            times.append(hit["at_ms"] - req["at_ms"])
    times.sort()
    result = {"switches": len(times), "requests": len(summary.get("layer_requests", [])),
              "p50_ms": pct(times, 50), "p95_ms": pct(times, 95), "max_ms": times[-1] if times else None,
              "discontinuities": summary.get("discontinuities")}
    print(json.dumps(result), flush=True)
    return result


def layers_fanout(viewers_list, window):
    rows = []
    for n in viewers_list:
        rows.append(fanout_run(n, window, "ladder", LADDER))
        rows.append(fanout_run(n, window))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", nargs="?", default="all", choices=["fanout", "ttff", "seek", "live", "live-fanout", "ingest-cpu", "ingest-latency", "hls", "layer-switch", "layers-fanout", "all"])
    ap.add_argument("--viewers", default="50,100,200")
    ap.add_argument("--window", type=int, default=20)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--seeks", type=int, default=20)
    ap.add_argument("--gap", type=float, default=2.0)
    a = ap.parse_args()
    for b in ("wisp", "wisp-transcoder", "whep-client"):
        if not os.path.exists(f"{BIN}/{b}"):
            sys.exit(f"{BIN}/{b} missing: cargo build --release -p wisp -p wisp-transcoder -p whep-client")
    if a.what in ("ttff", "all"):
        ttff(a.runs)
    if a.what in ("seek", "all"):
        seek(a.seeks, a.gap)
    if a.what in ("live", "all"):
        live(a.runs)
    if a.what in ("ingest-cpu", "all"):
        ingest_cpu(a.window)
    if a.what in ("ingest-latency", "all"):
        ingest_latency(a.window)
    if a.what in ("hls", "all"):
        hls_bench(a.window)
    if a.what in ("fanout", "all"):
        fanout([int(v) for v in a.viewers.split(",")], a.window)
    if a.what in ("live-fanout", "all"):
        live_fanout([int(v) for v in a.viewers.split(",")], a.window)
    if a.what in ("layer-switch", "all"):
        layer_switch(a.seeks, a.gap)
    if a.what in ("layers-fanout", "all"):
        layers_fanout([int(v) for v in a.viewers.split(",")], a.window)


if __name__ == "__main__":
    main()
