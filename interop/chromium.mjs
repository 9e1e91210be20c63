// Headless Chromium as the interop checks run it: Debian's binary (or $CHROMIUM), loopback
// WebRTC allowed, real host candidates instead of mDNS names (inside `unshare -n`).
import http from "node:http";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));

// Serves `page` at every path but `/<script>`, which is that file of the npm package `pkg`
// (whip-whep unless said), on an origin of its own (a free port on 127.0.0.1). Resolves to the
// server and its origin.
export async function serveThirdPartyPage(page, script, pkg = "whip-whep") {
  const server = http.createServer((req, res) => {
    if (req.url.startsWith(`/${script}`)) {
      res.writeHead(200, { "Content-Type": "text/javascript" });
      res.end(fs.readFileSync(path.join(here, "node_modules", pkg, script)));
    } else {
      res.writeHead(200, { "Content-Type": "text/html" });
      res.end(page);
    }
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return { server, origin: `http://127.0.0.1:${server.address().port}` };
}

// FAKE_VIDEO=file.y4m: the fake camera shows that file (looped) instead of its test pattern,
// for content that takes real bitrate to encode.
export function launchChromium() {
  const fake = process.env.FAKE_VIDEO ? [`--use-file-for-fake-video-capture=${process.env.FAKE_VIDEO}`] : [];
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: [
      "--headless", "--no-sandbox", "--disable-gpu",
      "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
      "--allow-loopback-in-peer-connection", "--disable-background-networking",
      "--disable-features=WebRtcHideLocalIpsWithMdns", "--autoplay-policy=no-user-gesture-required",
      ...fake,
    ],
  });
}

// A first script for third-party pages: records every fetch the page makes (method, status,
// If-Match, candidates in the body) in `window.requests`, so a check can tell what the
// whip-whep client sent for trickle ICE and ICE restarts and what it got back.
export const recordFetches = `<script>
window.requests = [];
const realFetch = window.fetch.bind(window);
window.fetch = async (url, init = {}) => {
  const headers = init.headers || {};
  const body = typeof init.body === "string" ? init.body : "";
  const entry = { method: init.method || "GET", ifMatch: headers["If-Match"] || null,
    candidates: (body.match(/a=candidate:/g) || []).length,
    ufrag: (body.match(/a=ice-ufrag:(.*)/) || [])[1] || null, status: 0 };
  window.requests.push(entry);
  const resp = await realFetch(url, init);
  entry.status = resp.status;
  return resp;
};
</script>`;

// What the page's fetch log says about trickle ICE: the PATCHes that carried candidates, and
// whether one got 204.
export function trickleResult(requests) {
  const patches = requests.filter((r) => r.method === "PATCH" && r.candidates > 0);
  return { ok: patches.some((r) => r.status === 204),
    patches: patches.map((r) => `${r.status} (${r.candidates} candidates, If-Match ${r.ifMatch})`) };
}

// The local ICE ufrag of the page's selected candidate pair (changes with an ICE restart).
export async function localUfrag(page, pcExpr) {
  return page.evaluate(async (expr) => {
    const pc = eval(expr);
    let ufrag = null;
    (await pc.getStats()).forEach((r) => {
      if (r.type === "transport" && r.iceLocalUsernameFragment) ufrag = r.iceLocalUsernameFragment;
    });
    return ufrag;
  }, pcExpr);
}

// Polls `fn` every 100 ms until it returns something truthy (returned), or throws after `ms`
// naming `what`.
export async function waitFor(what, fn, ms) {
  const until = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > until) throw new Error("timed out waiting for " + what);
    await new Promise((r) => setTimeout(r, 100));
  }
}
