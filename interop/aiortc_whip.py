"""An aiortc WHIP publisher: sends a generated test picture (moving colour bands, 640x360 at
30 fps) and a 440 Hz tone to a WHIP endpoint for some seconds, then DELETEs its resource.

Usage: python aiortc_whip.py URL TOKEN [SECONDS] [--codec h264|vp8]
Prints one JSON line (`{"ok", "status", "location", "delete_status", ...}`) and exits 0 when
the POST got 201 and the publish ran its time (SECONDS, default 10; 0 = until killed).

aiortc's ICE (aioice) leaves out loopback addresses when it gathers host candidates; inside
`unshare -n` loopback is the only interface, so the lookup is patched to return 127.0.0.1.
"""

import argparse
import asyncio
import fractions
import json
import math
import sys
import time
import urllib.error
import urllib.request

import aioice.ice

aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]

import array  # noqa: E402

import av  # noqa: E402
from aiortc import (  # noqa: E402
    MediaStreamTrack,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)

WIDTH, HEIGHT, FPS = 640, 360, 30


class Paced(MediaStreamTrack):
    """A generated track whose frame `n` is due `n * period` seconds after the first."""

    period = 1.0

    def __init__(self):
        super().__init__()
        self.n = 0
        self.start = None

    async def wait_for_next(self):
        if self.start is None:
            self.start = time.monotonic()
        due = self.start + self.n * self.period
        await asyncio.sleep(max(0.0, due - time.monotonic()))


class Picture(Paced):
    """Colour bands that move one step per frame."""

    kind = "video"
    period = 1 / FPS

    async def recv(self):
        await self.wait_for_next()
        frame = av.VideoFrame(WIDTH, HEIGHT, "yuv420p")
        shift = 8 * self.n
        luma = bytes(((x + shift) % WIDTH) * 220 // WIDTH + 16 for x in range(WIDTH))
        frame.planes[0].update(luma * HEIGHT)
        for plane, value in ((1, (self.n * 3) % 256), (2, 128)):
            frame.planes[plane].update(bytes([value]) * (WIDTH // 2) * (HEIGHT // 2))
        frame.pts = self.n * 3000
        frame.time_base = fractions.Fraction(1, 90000)
        self.n += 1
        return frame


class Tone(Paced):
    """A 440 Hz tone in 20 ms frames."""

    kind = "audio"
    period = 0.02

    async def recv(self):
        await self.wait_for_next()
        first = self.n * 960
        samples = array.array(
            "h", (int(math.sin(2 * math.pi * 440 * (first + i) / 48000) * 8000) for i in range(960))
        )
        frame = av.AudioFrame(format="s16", layout="mono", samples=960)
        frame.planes[0].update(samples.tobytes())
        frame.sample_rate = 48000
        frame.pts = self.n * 960
        frame.time_base = fractions.Fraction(1, 48000)
        self.n += 1
        return frame


def request(method, url, token, body=None):
    headers = {"Authorization": f"Bearer {token}"}
    if body is not None:
        headers["Content-Type"] = "application/sdp"
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers.get("Location"), resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, None, e.read().decode()


async def main(url, token, seconds, codec):
    pc = RTCPeerConnection()
    video = pc.addTransceiver(Picture(), direction="sendonly")
    pc.addTransceiver(Tone(), direction="sendonly")
    if codec:
        prefs = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType.lower() == f"video/{codec}"]
        video.setCodecPreferences(prefs)
    await pc.setLocalDescription(await pc.createOffer())
    loop = asyncio.get_running_loop()
    status, location, body = await loop.run_in_executor(
        None, request, "POST", url, token, pc.localDescription.sdp.encode()
    )
    result = {"ok": False, "status": status, "location": location}
    if status != 201:
        result["body"] = body[:300]
        print(json.dumps(result), flush=True)
        await pc.close()
        return 1
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
    print(json.dumps({"published": True, "location": location}), flush=True)
    if seconds > 0:
        await asyncio.sleep(seconds)
    else:
        await asyncio.Event().wait()
    result["connection"] = pc.connectionState
    result["delete_status"], _, _ = await loop.run_in_executor(None, request, "DELETE", location, token)
    result["ok"] = result["connection"] == "connected" and result["delete_status"] == 200
    await pc.close()
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="aiortc WHIP publisher of a test picture and tone")
    parser.add_argument("url")
    parser.add_argument("token")
    parser.add_argument("seconds", nargs="?", type=float, default=10.0)
    parser.add_argument("--codec", choices=["h264", "vp8"])
    a = parser.parse_args()
    sys.exit(asyncio.run(main(a.url, a.token, a.seconds, a.codec)))
