"""Checks what three whep-client viewers of a simulcast session saw (scripts/interop).

Usage: layers_check.py LIMIT_FOR_S AUTO.json PINNED.json LIMITED.json INFO.json AUTO.h264 PINNED.h264 LIMITED.h264

- AUTO (no limit, automatic) ends on the top layer;
- PINNED (`--layer h`) gets the middle layer from its pin on;
- LIMITED (500 kb/s for LIMIT_FOR_S seconds) moves down to the low layer while limited and
  back up to the top within 10 s of the limit lifting;
- every viewer's video decodes with FFmpeg without an error, at the sizes it reported;
- the session info lists the three layers and a layer per viewer.

Prints one JSON line per check; exits 1 if any failed.
"""

import json
import subprocess
import sys


def last_json(path):
    with open(path) as f:
        lines = [l for l in f.read().splitlines() if l.startswith("{")]
    return json.loads(lines[-1])


def decoded_sizes(path):
    """The decoder's errors and the picture size of each frame it decoded."""
    errors = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", path, "-f", "null", "-"],
        capture_output=True, text=True,
    ).stderr.strip().splitlines()
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v", "-show_entries", "frame=width,height",
         "-of", "csv=p=0", path],
        capture_output=True, text=True,
    ).stdout.split()
    runs = []
    for size in out:
        if runs and runs[-1][0] == size:
            runs[-1][1] += 1
        else:
            runs.append([size, 1])
    return errors, runs


def main():
    limit_for_ms = float(sys.argv[1]) * 1000
    auto, pinned, limited, info = (last_json(p) for p in sys.argv[2:6])
    videos = sys.argv[6:9]
    ok = True

    def report(step, passed, **fields):
        nonlocal ok
        ok &= passed
        print(json.dumps({"step": step, "ok": passed, **fields}), flush=True)

    layers = info.get("layers", [])
    sizes = {l["rid"]: (l.get("width"), l.get("height")) for l in layers}
    report("layers", len(layers) == 3 and all(l["active"] for l in layers)
           and layers[0]["height"] < layers[1]["height"] < layers[2]["height"],
           layers=layers, viewer_layers=info.get("viewer_layers"))
    top = (layers[-1]["width"], layers[-1]["height"]) if layers else None
    mid = sizes.get("h")
    low = (layers[0]["width"], layers[0]["height"]) if layers else None
    run = lambda r: (r["width"], r["height"])

    a = auto.get("sizes", [])
    report("auto", bool(a) and run(a[-1]) == top and a[-1]["frames"] >= 60, sizes=a,
           frames=auto.get("video_frames"), error=auto.get("error"))

    p = pinned.get("sizes", [])
    reply = pinned.get("layer_reply") or {}
    report("pinned", reply.get("ok") is True and bool(p) and run(p[-1]) == mid
           and p[-1]["frames"] >= 300, sizes=p, reply_layer=reply.get("layer"),
           events=pinned.get("layer_events"))

    l = limited.get("sizes", [])
    down = [r for r in l if run(r) == low and r["at_ms"] < limit_for_ms]
    up = [r for r in l if run(r) == top and limit_for_ms <= r["at_ms"] <= limit_for_ms + 10_000]
    report("limited", bool(down) and bool(up), sizes=l, dropped=limited.get("limit_dropped"),
           down_after_ms=down[0]["at_ms"] if down else None,
           up_after_lift_ms=up[0]["at_ms"] - limit_for_ms if up else None)

    for name, path in zip(["auto", "pinned", "limited"], videos):
        errors, runs = decoded_sizes(path)
        report(f"decode-{name}", not errors and bool(runs), errors=errors[:5], runs=runs)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
