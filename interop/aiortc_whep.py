"""An aiortc WHEP viewer: offers recvonly video and audio, POSTs the offer to a WHEP endpoint,
decodes video frames with aiortc's own decoders, and prints a JSON summary.

Usage: python aiortc_whep.py URL TOKEN [FRAMES] [--control]
Exit 0 when FRAMES video frames were decoded (and audio frames arrived) within 40 s. With
--control it also opens a `control` data channel, sends {"id":1,"op":"status"} once it is
open, and needs the reply (a message with "id": 1 and "ok") as well.

aiortc's ICE (aioice) leaves out loopback addresses when it gathers host candidates; inside
`unshare -n` loopback is the only interface, so the lookup is patched to return 127.0.0.1.
"""

import asyncio
import json
import sys
import time
import urllib.error
import urllib.request

import aioice.ice

aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]

from aiortc import RTCPeerConnection, RTCSessionDescription  # noqa: E402


def post(url, token, sdp):
    req = urllib.request.Request(
        url,
        data=sdp.encode(),
        method="POST",
        headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers.get("Location"), resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, None, e.read().decode()


def delete(url, token):
    req = urllib.request.Request(url, method="DELETE", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status


async def main(url, token, want, control):
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    result = {"video_frames": 0, "audio_frames": 0, "width": 0, "height": 0}
    done = asyncio.Event()
    replied = asyncio.Event()
    if control:
        channel = pc.createDataChannel("control")
        channel.on("open", lambda: channel.send(json.dumps({"id": 1, "op": "status"})))

        @channel.on("message")
        def on_message(message):
            try:
                m = json.loads(message)
            except ValueError:
                return
            if isinstance(m, dict) and m.get("id") == 1:
                result["control_reply"] = m
                replied.set()
    else:
        replied.set()

    async def consume(track):
        while True:
            try:
                frame = await track.recv()
            except Exception:
                return
            if track.kind == "video":
                result["video_frames"] += 1
                result["width"], result["height"] = frame.width, frame.height
                if result["video_frames"] >= want and result["audio_frames"] > 0:
                    done.set()
            else:
                result["audio_frames"] += 1

    pc.on("track", lambda track: asyncio.ensure_future(consume(track)))
    await pc.setLocalDescription(await pc.createOffer())
    started = time.monotonic()
    status, location, body = await asyncio.get_running_loop().run_in_executor(
        None, post, url, token, pc.localDescription.sdp
    )
    if status != 201:
        print(json.dumps({"ok": False, "status": status, "body": body[:300]}))
        return 1
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
    try:
        await asyncio.wait_for(asyncio.gather(done.wait(), replied.wait()), timeout=40)
    except asyncio.TimeoutError:
        pass
    result["ms"] = int((time.monotonic() - started) * 1000)
    result["ok"] = result["video_frames"] >= want and result["audio_frames"] > 0
    if control:
        result["ok"] = result["ok"] and "ok" in result.get("control_reply", {})
    result["delete_status"] = await asyncio.get_running_loop().run_in_executor(
        None, delete, location, token
    )
    await pc.close()
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--control"]
    frames = int(args[2]) if len(args) > 2 else 30
    sys.exit(asyncio.run(main(args[0], args[1], frames, "--control" in sys.argv[1:])))
