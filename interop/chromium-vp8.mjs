// Headless Chromium as a browser without H.264: its WHEP offer carries VP8 alone (the codec
// preferences set so), for a VOD session whose `codecs` are ["h264", "vp8"]. The gateway
// answers VP8 instead of a 422, and Chromium decodes the session's picture from the same
// transcoder's VP8 track.
// Usage: node chromium-vp8.mjs BASE_URL VIEW_TOKEN SESSION WIDTHxHEIGHT
// Prints one JSON line; exits non-zero if the check fails.

import { launchChromium, waitFor } from "./chromium.mjs";

const [base, token, session, size] = process.argv.slice(2);
if (!base || !token || !session || !size) {
  console.error("usage: node chromium-vp8.mjs BASE_URL VIEW_TOKEN SESSION WIDTHxHEIGHT");
  process.exit(2);
}

const browser = await launchChromium();
const page = await (await browser.newContext()).newPage();
const result = { check: "Chromium offering VP8 alone" };
try {
  // Any page of the gateway's origin: the POST is then same-origin.
  await page.goto(`${base}/healthz`);
  result.post = await page.evaluate(async ({ base, token, session }) => {
    const pc = new RTCPeerConnection();
    const video = pc.addTransceiver("video", { direction: "recvonly" });
    video.setCodecPreferences(RTCRtpReceiver.getCapabilities("video").codecs
      .filter((c) => c.mimeType === "video/VP8"));
    pc.addTransceiver("audio", { direction: "recvonly" });
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    const r = await fetch(`${base}/whep/${session}`, {
      method: "POST",
      headers: { "Content-Type": "application/sdp", Authorization: `Bearer ${token}` },
      body: offer.sdp,
    });
    const answer = await r.text();
    window.pc = pc;
    if (r.status !== 201) return { status: r.status, body: answer };
    await pc.setRemoteDescription({ type: "answer", sdp: answer });
    return {
      status: r.status,
      offerHasH264: /H264\/90000/.test(offer.sdp),
      answerVideo: (answer.match(/a=rtpmap:\d+ (H264|VP8)\/90000/g) || []).join(" "),
    };
  }, { base, token, session });
  if (result.post.status !== 201) throw new Error(`the POST got ${result.post.status}`);
  const stats = () => page.evaluate(async () => {
    const report = await window.pc.getStats();
    let inbound = null;
    report.forEach((s) => { if (s.type === "inbound-rtp" && s.kind === "video") inbound = s; });
    if (!inbound) return null;
    const codec = inbound.codecId && report.get(inbound.codecId);
    return {
      framesDecoded: inbound.framesDecoded || 0,
      size: inbound.frameWidth ? `${inbound.frameWidth}x${inbound.frameHeight}` : null,
      codec: codec ? codec.mimeType : null,
    };
  });
  result.video = await waitFor("60 decoded frames", async () => {
    const s = await stats();
    return s && s.framesDecoded >= 60 ? s : null;
  }, 20000);
  result.ok = result.post.status === 201 && result.post.offerHasH264 === false
    && result.video.codec === "video/VP8" && result.video.size === size;
} catch (e) {
  result.ok = false;
  result.error = String(e);
}
console.log(JSON.stringify(result));
await browser.close();
process.exit(result.ok ? 0 : 1);
