"""An RTSP server of a test picture and tone, for pulled-session tests: GStreamer's RTSP server
(gst-rtsp-server, Debian's gir1.2-gst-rtsp-server-1.0) serving H.264 (baseline, 1 s GOP) and
Opus at rtsp://127.0.0.1:PORT/cam. FFmpeg cannot serve RTSP; this is a real server no one here
wrote.

Usage: /usr/bin/python3 rtsp_server.py PORT [SECONDS]
Prints "serving rtsp://127.0.0.1:PORT/cam" once it listens; exits after SECONDS (default: never).
Needs Debian's python3-gi (hence /usr/bin/python3, not a venv).
"""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

PIPELINE = (
    "( videotestsrc is-live=true pattern=smpte ! video/x-raw,width=640,height=360,framerate=30/1 "
    "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 bitrate=1000 "
    "! video/x-h264,profile=baseline ! rtph264pay name=pay0 pt=96 config-interval=1 "
    "audiotestsrc is-live=true freq=440 ! audioconvert ! audioresample ! opusenc "
    "! rtpopuspay name=pay1 pt=97 )"
)


def main():
    port = sys.argv[1]
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 0
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(PIPELINE)
    factory.set_shared(True)
    server.get_mount_points().add_factory("/cam", factory)
    server.attach(None)
    print(f"serving rtsp://127.0.0.1:{port}/cam", flush=True)
    loop = GLib.MainLoop()
    if seconds > 0:
        GLib.timeout_add(int(seconds * 1000), loop.quit)
    loop.run()


if __name__ == "__main__":
    main()
