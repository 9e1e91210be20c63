"""Checks that a viewer who joined a live session mid-GOP started from the publisher's last
keyframe before it joined, and then got every frame the publisher sent, in order.

Usage: python backlog_check.py PUBLISHER_FRAME_LOG VIEWER_FRAME_LOG VIEWER_SUMMARY_JSON
The frame logs are `aiortc_whip.py --frame-log` and `whep-client play --frame-log` output
(frames matched by their last bytes); the summary is `whep-client play --json`'s last line.
Prints what it found as one JSON line; exits 1 if the check fails.
"""

import json
import sys


def read(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def main(pub_path, view_path, summary_path):
    sent = read(pub_path)
    seen = read(view_path)
    with open(summary_path) as f:
        summary = json.loads(f.read().strip().splitlines()[-1])
    if not seen or summary.get("first_frame_ms") is None:
        print(json.dumps({"ok": False, "why": "the viewer got no frames", "summary": summary}))
        return 1
    # When the viewer sent its offer, on the same monotonic clock.
    joined = seen[0]["at_us"] - summary["first_frame_ms"] * 1000
    keyframes = [i for i, f in enumerate(sent) if f["keyframe"] and f["at_us"] < joined]
    result = {
        "first_frame_ms": summary["first_frame_ms"],
        "frames": len(seen),
        "publisher_keyframes_before_join": len(keyframes),
    }
    if not keyframes:
        result.update(ok=False, why="the publisher sent no keyframe before the viewer joined")
        print(json.dumps(result))
        return 1
    start = keyframes[-1]
    result["keyframe_age_at_join_ms"] = round((joined - sent[start]["at_us"]) / 1000)
    expected = [f["tail"] for f in sent[start:start + len(seen)]]
    got = [f["tail"] for f in seen]
    if got[0] != expected[0]:
        later = next((i for i, f in enumerate(sent) if f["tail"] == got[0]), None)
        result.update(ok=False, why="the first frame is not the last keyframe before joining",
                      first_frame_is_publisher_frame=later, expected_frame=start)
    elif got != expected[:len(got)]:
        diverged = next(i for i, (a, b) in enumerate(zip(got, expected)) if a != b)
        result.update(ok=False, why=f"frame {diverged} after the keyframe differs from the publisher's")
    else:
        result["ok"] = True
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    sys.exit(main(*sys.argv[1:]))
