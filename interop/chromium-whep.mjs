// Headless Chromium plays a Wisp session two ways and checks what it decoded:
//  1. `whep`: a page on another origin uses the whip-whep npm package's WHEPClient (CORS,
//     Location, trickle PATCH, then an ICE restart while playing, all as a third-party player
//     would; whip-whep 1.2.0 sends its trickle PATCHes without If-Match);
//  2. `player`: Wisp's own player page at /play/{session}?token=...
// Usage: node chromium-whep.mjs BASE_URL TOKEN SESSION [whep|player] [FRAMES] [WxH|any]
// (the decoded size must be WxH, default 1280x720; `any` for a live publisher's)
// Prints one JSON line per check (`cell`: its place in docs/interop.md's matrix); exits non-zero
// if a check fails.

import { launchChromium, localUfrag, recordFetches, serveThirdPartyPage, trickleResult } from "./chromium.mjs";

const [base, token, session = "demo", mode = "whep", framesArg = "60", size = "1280x720"] =
  process.argv.slice(2);
const [wantWidth, wantHeight] = size === "any" ? [0, 0] : size.split("x").map(Number);
if (!base || !token) {
  console.error("usage: node chromium-whep.mjs BASE_URL TOKEN [SESSION] [whep|player] [FRAMES]");
  process.exit(2);
}
const want = Number(framesArg);

// The third-party page, served from its own origin (another port).
const page = `<!doctype html><meta charset="utf-8"><title>whip-whep player</title>
${recordFetches}
<video id="v" autoplay playsinline muted></video><audio id="a" autoplay></audio>
<script type="module">
import { WHEPClient } from "/whep.js";
const params = new URLSearchParams(location.search);
const pc = new RTCPeerConnection();
pc.addTransceiver("video", { direction: "recvonly" });
pc.addTransceiver("audio", { direction: "recvonly" });
pc.ontrack = (ev) => {
  const el = ev.track.kind === "video" ? document.getElementById("v") : document.getElementById("a");
  el.srcObject = new MediaStream([ev.track]);
  el.play().catch(() => {});
};
window.whepError = null;
const client = new WHEPClient();
client.view(pc, params.get("url"), params.get("token")).catch((e) => { window.whepError = String(e); });
window.pc = pc;
window.client = client;
</script>`;

const { server, origin } = await serveThirdPartyPage(page, "whep.js");

const browser = await launchChromium();

// Reads decoding progress from the page's RTCPeerConnection.
async function statsOf(p, pcExpr) {
  return p.evaluate(async (expr) => {
    const pc = eval(expr);
    const out = { frames: 0, width: 0, height: 0, audioPackets: 0, audioSamples: 0, state: pc ? pc.connectionState : "none" };
    if (!pc) return out;
    (await pc.getStats()).forEach((r) => {
      if (r.type === "inbound-rtp" && r.kind === "video") {
        out.frames = r.framesDecoded || 0;
        out.width = r.frameWidth || 0;
        out.height = r.frameHeight || 0;
        out.codec = r.codecId;
      }
      if (r.type === "inbound-rtp" && r.kind === "audio") {
        out.audioPackets = r.packetsReceived || 0;
        out.audioSamples = r.totalSamplesReceived || 0;
      }
    });
    return out;
  }, pcExpr);
}

let failed = false;
async function check(name, client, thirdParty, url, pcExpr, errorExpr) {
  const ctx = await browser.newContext();
  const p = await ctx.newPage();
  const consoleLines = [];
  p.on("console", (m) => consoleLines.push(m.text()));
  const started = Date.now();
  await p.goto(url);
  let s = { frames: 0 };
  let error = null;
  while (Date.now() - started < 40000) {
    s = await statsOf(p, pcExpr);
    error = await p.evaluate(errorExpr);
    if (error || (s.frames >= want && s.audioPackets > 0)) break;
    await new Promise((r) => setTimeout(r, 250));
  }
  const sized = size === "any" ? s.width > 0 : s.width === wantWidth && s.height === wantHeight;
  const ok = !error && s.frames >= want && sized && s.audioPackets > 0;
  const result = { check: name, cell: [client, "WHEP"], ok, ms: Date.now() - started, error, ...s };
  if (!ok) { failed = true; result.console = consoleLines.slice(-10); }
  console.log(JSON.stringify(result));
  if (ok && thirdParty) {
    await trickleAndRestart(p, client, s.frames, consoleLines);
  }
  await ctx.close();
}

// whip-whep's trickle PATCHes (from its fetch log), then its ICE restart with media flowing:
// `client.restart()`, a PATCH with If-Match "*" answered 200, a new local ufrag, and frames
// still being decoded.
async function trickleAndRestart(p, client, framesBefore, consoleLines) {
  const trickle = { check: "trickle ICE", cell: [client, "trickle"],
    ...trickleResult(await p.evaluate(() => window.requests)) };
  if (!trickle.ok) { failed = true; trickle.console = consoleLines.slice(-10); }
  console.log(JSON.stringify(trickle));

  const ufragBefore = await localUfrag(p, "window.pc");
  await p.evaluate(() => window.client.restart());
  const started = Date.now();
  let r = {};
  while (Date.now() - started < 15000) {
    const requests = await p.evaluate(() => window.requests);
    const patch = requests.find((q) => q.method === "PATCH" && q.ifMatch === "*" && q.status);
    const s = await statsOf(p, "window.pc");
    const ufrag = await localUfrag(p, "window.pc");
    r = { restartStatus: patch ? patch.status : null, ufragBefore, ufrag, state: s.state,
      framesAfter: s.frames - framesBefore };
    if (patch && patch.status === 200 && ufrag && ufrag !== ufragBefore && s.state === "connected"
        && s.frames - framesBefore >= 60) break;
    await new Promise((res) => setTimeout(res, 250));
  }
  const ok = r.restartStatus === 200 && r.ufrag !== ufragBefore && r.state === "connected"
    && r.framesAfter >= 60;
  const result = { check: "ICE restart with media flowing", cell: [client, "ICE restart"], ok,
    ms: Date.now() - started, ...r };
  if (!ok) { failed = true; result.console = consoleLines.slice(-10); }
  console.log(JSON.stringify(result));
}

const endpoint = `${base}/whep/${session}`;
if (mode === "whep" || mode === "all") {
  await check("whip-whep WHEPClient, cross-origin", "Chromium + whip-whep WHEPClient", true,
    `${origin}/?url=${encodeURIComponent(endpoint)}&token=${encodeURIComponent(token)}`,
    "window.pc", "window.whepError");
}
if (mode === "player" || mode === "all") {
  // Wisp's player keeps its peer connection in a module-scoped variable; it exposes progress in
  // the page instead: read the <video>'s RTCPeerConnection through the stats it shows.
  await check("wisp player page", "Chromium + Wisp player page", false, `${base}/play/${session}?token=${encodeURIComponent(token)}`,
    "window.wispPeer", "document.body.dataset.error || null");
}
await browser.close();
server.close();
process.exit(failed ? 1 : 0);
