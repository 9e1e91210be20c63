// Headless Chromium publishes its fake camera and microphone to a Wisp WHIP endpoint from a
// page on another origin, with the whip-whep npm package's WHIPClient (trickle PATCH, CORS,
// Location all exercised as a third-party publisher would).
// Usage: node chromium-whip.mjs BASE_URL TOKEN SESSION [SECONDS] [simulcast|noise|restart]
// With `simulcast`, video goes out as three layers (RIDs q, h, f: a quarter, half and full size).
// With `noise`, the video is a 640x360 canvas of fresh random pixels every frame, which no
// encoder can compress: the publisher sends as much as its bandwidth estimate allows.
// `simulcast+noise` sends that canvas as the three layers, each at its maxBitrate once the
// publisher's estimate allows.
// With `restart`, halfway through it checks that its trickle PATCH got 204, then restarts ICE
// (`client.restart()`: PATCH with If-Match "*", 200, new ufrag) and keeps publishing.
// Prints a JSON line once connected and a last one after SECONDS (default 15) of publishing;
// exits 0 if it connected and encoded video the whole time.

import { launchChromium, localUfrag, recordFetches, serveThirdPartyPage, trickleResult } from "./chromium.mjs";

const [base, token, session, secondsArg = "15", mode = ""] = process.argv.slice(2);
if (!base || !token || !session) {
  console.error("usage: node chromium-whip.mjs BASE_URL TOKEN SESSION [SECONDS] [restart|simulcast|noise|simulcast+noise|profile=PLID]");
  process.exit(2);
}
const seconds = Number(secondsArg);

const page = `<!doctype html><meta charset="utf-8"><title>whip-whep publisher</title>
${recordFetches}
<script type="module">
import { WHIPClient } from "/whip.js";
const params = new URLSearchParams(location.search);
window.whipError = null;
try {
  let media;
  if (params.get("noise")) {
    const canvas = Object.assign(document.createElement("canvas"), { width: 640, height: 360 });
    const g = canvas.getContext("2d");
    const img = g.createImageData(640, 360);
    const words = new Uint32Array(img.data.buffer);
    setInterval(() => {
      for (let i = 0; i < words.length; i++) words[i] = (Math.random() * 0xffffff) | 0xff000000;
      g.putImageData(img, 0, 0);
    }, 33);
    media = canvas.captureStream(30);
    const mic = await navigator.mediaDevices.getUserMedia({ audio: true });
    media.addTrack(mic.getAudioTracks()[0]);
  } else {
    media = await navigator.mediaDevices.getUserMedia({
      video: { width: 1280, height: 720, frameRate: 30 }, audio: true });
  }
  const pc = new RTCPeerConnection();
  const layers = params.get("simulcast") ? [
    { rid: "q", scaleResolutionDownBy: 4, maxBitrate: 300000 },
    { rid: "h", scaleResolutionDownBy: 2, maxBitrate: 900000 },
    { rid: "f", maxBitrate: 2500000 },
  ] : null;
  for (const track of media.getTracks()) {
    const init = { direction: "sendonly" };
    if (track.kind === "video" && layers) init.sendEncodings = layers;
    const transceiver = pc.addTransceiver(track, init);
    // Offer one H.264 profile only (e.g. 4d001f, main), as FFmpeg and OBS offer their
    // encoder's.
    const profile = params.get("profile");
    if (track.kind === "video" && profile) {
      const codecs = RTCRtpReceiver.getCapabilities("video").codecs.filter((c) =>
        c.mimeType === "video/H264" && (c.sdpFmtpLine || "").includes("packetization-mode=1")
        && (c.sdpFmtpLine || "").includes("profile-level-id=" + profile));
      if (!codecs.length) throw new Error("this browser has no H.264 " + profile + " to offer");
      transceiver.setCodecPreferences(codecs);
    }
  }
  window.pc = pc;
  window.client = new WHIPClient();
  await window.client.publish(pc, params.get("url"), params.get("token"));
} catch (e) {
  window.whipError = String(e);
}
</script>`;

const { server, origin } = await serveThirdPartyPage(page, "whip.js");

const browser = await launchChromium();
const ctx = await browser.newContext();
const p = await ctx.newPage();
const consoleLines = [];
p.on("console", (m) => consoleLines.push(m.text()));
const endpoint = `${base}/whip/${session}`;
// Modes: restart, simulcast, noise, simulcast+noise, or profile=PLID (offer that H.264 profile only).
const simulcast = mode === "simulcast" ? "&simulcast=1" : mode === "noise" ? "&noise=1"
  : mode === "simulcast+noise" ? "&simulcast=1&noise=1"
  : mode.startsWith("profile=") ? `&profile=${mode.slice(8)}` : "";
await p.goto(`${origin}/?url=${encodeURIComponent(endpoint)}&token=${encodeURIComponent(token)}${simulcast}`);

async function stats() {
  return p.evaluate(async () => {
    const out = { state: window.pc ? window.pc.connectionState : "none", framesEncoded: 0, codec: null, error: window.whipError };
    if (!window.pc) return out;
    const all = await window.pc.getStats();
    all.forEach((r) => {
      // One report per simulcast layer: the busiest one counts.
      if (r.type === "outbound-rtp" && r.kind === "video" && (r.framesEncoded || 0) >= out.framesEncoded) {
        out.framesEncoded = r.framesEncoded || 0;
        out.width = r.frameWidth || 0;
        out.height = r.frameHeight || 0;
        const c = r.codecId && all.get(r.codecId);
        out.codec = c ? c.mimeType : null;
      }
      // Receiver reports from the gateway: they keep coming only while it receives.
      if (r.type === "remote-inbound-rtp" && r.kind === "video") {
        out.receiverReports = (out.receiverReports || 0) + (r.roundTripTimeMeasurements || 0);
      }
      if (r.type === "outbound-rtp" && r.kind === "video" && r.rid) {
        (out.layers ||= []).push(`${r.rid}:${r.frameWidth || 0}x${r.frameHeight || 0}`);
      }
    });
    return out;
  });
}

let s = await stats();
const started = Date.now();
while (Date.now() - started < 20000 && s.state !== "connected" && !s.error) {
  await new Promise((r) => setTimeout(r, 200));
  s = await stats();
}
const connected = s.state === "connected";
console.log(JSON.stringify({ check: "Chromium WHIP publisher", connected, ms: Date.now() - started, ...s }));
const client = "Chromium + whip-whep WHIPClient";
let ok = connected;
if (connected) {
  const before = s.framesEncoded;
  if (mode === "restart") {
    // Trickle (from the page's fetch log), then an ICE restart halfway through.
    await new Promise((r) => setTimeout(r, seconds * 500));
    const trickle = { check: "trickle ICE", cell: [client, "trickle"],
      ...trickleResult(await p.evaluate(() => window.requests)) };
    console.log(JSON.stringify(trickle));
    const ufragBefore = await localUfrag(p, "window.pc");
    const atRestart = await stats();
    const encodedBefore = atRestart.framesEncoded;
    await p.evaluate(() => window.client.restart());
    const t0 = Date.now();
    let r = {};
    while (Date.now() - t0 < 10000) {
      const patch = (await p.evaluate(() => window.requests))
        .find((q) => q.method === "PATCH" && q.ifMatch === "*" && q.status);
      const now = await stats();
      r = { restartStatus: patch ? patch.status : null, ufragBefore,
        ufrag: await localUfrag(p, "window.pc"), state: now.state,
        framesAfter: now.framesEncoded - encodedBefore,
        reportsAfter: (now.receiverReports || 0) - (atRestart.receiverReports || 0) };
      if (r.restartStatus === 200 && r.ufrag !== ufragBefore && r.state === "connected"
          && r.framesAfter >= 30 && r.reportsAfter >= 2) break;
      await new Promise((res) => setTimeout(res, 250));
    }
    // The gateway still receives on the new ICE session: its receiver reports keep coming.
    const restarted = r.restartStatus === 200 && r.ufrag !== ufragBefore
      && r.state === "connected" && r.framesAfter >= 30 && r.reportsAfter >= 2;
    console.log(JSON.stringify({ check: "ICE restart while publishing", cell: [client, "ICE restart"],
      ok: restarted, ms: Date.now() - t0, ...r }));
    ok = trickle.ok && restarted;
    await new Promise((res) => setTimeout(res, Math.max(0, seconds * 500 - (Date.now() - t0))));
  } else {
    await new Promise((r) => setTimeout(r, seconds * 1000));
  }
  s = await stats();
  // Noise under a low bitrate cap is encoded at a few frames a second (Chromium drops frames
  // rather than send them over its estimate): still encoding is what counts then.
  const minFps = mode === "noise" ? 1 : 10;
  ok = ok && s.state === "connected" && s.framesEncoded - before > seconds * minFps;
  // Stop publishing: the resource's DELETE.
  await p.evaluate(() => window.client.stop()).catch(() => {});
}
const result = { check: "Chromium WHIP publisher", cell: [client, "WHIP"], ok, ...s };
if (!ok) result.console = consoleLines.slice(-10);
console.log(JSON.stringify(result));
await browser.close();
server.close();
process.exit(ok ? 0 : 1);
