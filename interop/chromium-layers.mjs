// Headless Chromium plays a session with layers (a VOD ladder) in Wisp's player page: the page
// shows the layer playing and offers the layers in its Quality selector; choosing the lowest
// one makes Chromium's decoder show that layer's picture size, and choosing "auto" again gives
// a layer back by the gateway's choice. Also the WHEP extensions through whip-whep's
// WHEPClient on another origin: its 201's Links give it an event stream (the `layers` and
// `viewercount` events are read from it) and selectLayer pins a layer, unselectLayer unpins.
// Usage: node chromium-layers.mjs BASE_URL VIEW_TOKEN SESSION LOW_RID
// Prints one JSON line per check; exits non-zero if one fails.

import { launchChromium, serveThirdPartyPage, waitFor } from "./chromium.mjs";

const [base, token, session, low] = process.argv.slice(2);
if (!base || !token || !session || !low) {
  console.error("usage: node chromium-layers.mjs BASE_URL VIEW_TOKEN SESSION LOW_RID");
  process.exit(2);
}

let failed = false;
function report(result) {
  if (!result.ok) failed = true;
  console.log(JSON.stringify(result));
}

const browser = await launchChromium();

// 1. The player page.
{
  const ctx = await browser.newContext();
  const p = await ctx.newPage();
  const result = { check: "player page: quality selector", cell: ["Chromium + Wisp player page", "layers"] };
  try {
    await p.goto(`${base}/play/${session}?token=${encodeURIComponent(token)}`);
    const size = () => p.evaluate(() => {
      const v = document.getElementById("video");
      return v.videoWidth ? v.videoWidth + "x" + v.videoHeight : null;
    });
    await waitFor("a picture", size, 15000);
    await waitFor("the quality selector", () => p.evaluate(() =>
      !document.getElementById("layerbar").classList.contains("hidden")), 10000);
    result.options = await p.evaluate(() =>
      Array.from(document.getElementById("layer").options).map((o) => o.value));
    result.first = { layer: await p.evaluate(() => document.body.dataset.layer || null), size: await size() };
    await p.selectOption("#layer", low);
    await waitFor("the low layer", () => p.evaluate((l) => document.body.dataset.layer === l, low), 10000);
    const lowSize = await waitFor("the low layer's picture", async () => {
      const s = await size();
      return s && s.endsWith("x" + low.replace("p", "")) ? s : null;
    }, 10000);
    result.low = { layer: low, size: lowSize, shown: await p.evaluate(() => document.getElementById("layernow").textContent) };
    await p.selectOption("#layer", "");
    result.auto = await waitFor("a layer by the gateway's choice", () => p.evaluate(() =>
      /\(auto\)/.test(document.getElementById("layernow").textContent)
        ? document.getElementById("layernow").textContent : null), 10000);
    result.ok = result.options.length === 4 && result.options.includes(low);
  } catch (e) {
    result.ok = false;
    result.error = String(e);
    result.page = await p.evaluate(() => document.getElementById("error").textContent).catch(() => null);
  }
  report(result);
  await ctx.close();
}

// 2. whip-whep's WHEPClient: server-sent events and layer selection.
{
  const page = `<!doctype html><meta charset="utf-8"><title>whep extensions</title>
<video id="v" autoplay muted playsinline></video>
<script>
// whip-whep 1.2.0 hands only unnamed messages on, so the named events are listened for here,
// on the EventSource it makes, from its construction (events can arrive before the client
// returns it).
window.seen = [];
const RealEventSource = window.EventSource;
window.EventSource = function (url, init) {
  const es = new RealEventSource(url, init);
  window.eventSourceUrl = String(url);
  es.addEventListener("error", () => window.seen.push({ type: "error", data: { readyState: es.readyState } }));
  for (const t of ["active", "inactive", "layers", "viewercount", "reconnect"]) {
    es.addEventListener(t, (e) => window.seen.push({ type: t, data: JSON.parse(e.data) }));
  }
  return es;
};
</script>
<script type="module">
import { WHEPClient } from "/whep.js";
const params = new URLSearchParams(location.search);
window.whepError = null;
try {
  const pc = new RTCPeerConnection();
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.addTransceiver("audio", { direction: "recvonly" });
  pc.ontrack = (e) => { document.getElementById("v").srcObject = e.streams[0] || new MediaStream([e.track]); };
  window.pc = pc;
  window.client = new WHEPClient();
  await window.client.view(pc, params.get("url"), params.get("token"));
} catch (e) {
  window.whepError = String(e);
}
</script>`;
  const { server, origin } = await serveThirdPartyPage(page, "whep.js");
  const ctx = await browser.newContext();
  const p = await ctx.newPage();
  const result = { check: "whip-whep WHEPClient: events and layer selection", cell: ["Chromium + whip-whep WHEPClient", "layers"] };
  try {
    await p.goto(`${origin}/?url=${encodeURIComponent(`${base}/whep/${session}`)}&token=${encodeURIComponent(token)}`);
    const seen = (t) => p.evaluate((t) => window.seen.filter((e) => e.type === t).map((e) => e.data), t);
    const layers = await waitFor("a layers event", async () => (await seen("layers")).at(-1), 15000);
    const key = Object.keys(layers)[0];
    result.layers = layers[key].map((l) => `${l.rid}:${l.width}x${l.height}`);
    result.viewercount = (await waitFor("a viewercount event", async () => (await seen("viewercount")).at(-1), 5000)).viewercount;
    result.active = (await seen("active")).length;
    const size = () => p.evaluate(() => {
      const v = document.getElementById("v");
      return v.videoWidth ? v.videoWidth + "x" + v.videoHeight : null;
    });
    await waitFor("a picture", size, 15000);
    // Pin the lowest layer (spatialLayerId 0) through the extension, as the client does.
    await p.evaluate((m) => window.client.selectLayer({ mediaId: m, spatialLayerId: 0 }), key);
    result.pinned = await waitFor("the lowest layer's picture", async () => {
      const s = await size();
      return s && s.endsWith("x" + low.replace("p", "")) ? s : null;
    }, 10000);
    await p.evaluate(() => window.client.unselectLayer());
    result.ok = result.layers.length === 3 && result.viewercount >= 1 && result.active >= 1
      && key === "0";
    result.error = await p.evaluate(() => window.whepError);
    if (result.error) result.ok = false;
  } catch (e) {
    result.ok = false;
    result.error = String(e);
    result.seen = await p.evaluate(() => window.seen).catch(() => null);
  }
  report(result);
  await ctx.close();
  server.close();
}

await browser.close();
process.exit(failed ? 1 : 0);
