// Headless Chromium drives the controls of Wisp's player page on a VOD session whose first
// half is red and second half blue: it seeks with the page's seek bar and checks that the
// position events move and that the decoded picture turns blue (frames from the new
// position); it pauses with the page's button; a view-only token gets disabled controls; with
// an admin token, it removes the session under a playing page, which must say why it ended.
// Usage: node chromium-controls.mjs BASE_URL STEER_TOKEN VIEW_TOKEN SESSION [ADMIN_TOKEN]
// Prints one JSON line per check; exits non-zero if a check fails.

import { launchChromium, waitFor } from "./chromium.mjs";

const [base, steerToken, viewToken, session = "vod", adminToken] = process.argv.slice(2);
if (!base || !steerToken || !viewToken) {
  console.error("usage: node chromium-controls.mjs BASE_URL STEER_TOKEN VIEW_TOKEN [SESSION [ADMIN_TOKEN]]");
  process.exit(2);
}

const browser = await launchChromium();

let failed = false;
function report(result) {
  if (!result.ok) failed = true;
  console.log(JSON.stringify(result));
}

// The mean colour of the video's centre, from the decoded picture.
function centreColour(p) {
  return p.evaluate(() => {
    const v = document.getElementById("video");
    if (!v.videoWidth) return null;
    const c = document.createElement("canvas");
    c.width = 16; c.height = 16;
    const g = c.getContext("2d");
    g.drawImage(v, v.videoWidth / 2 - 8, v.videoHeight / 2 - 8, 16, 16, 0, 0, 16, 16);
    const d = g.getImageData(0, 0, 16, 16).data;
    let r = 0, gr = 0, b = 0;
    for (let i = 0; i < d.length; i += 4) { r += d[i]; gr += d[i + 1]; b += d[i + 2]; }
    const n = d.length / 4;
    return { r: Math.round(r / n), g: Math.round(gr / n), b: Math.round(b / n) };
  });
}

const isRed = (c) => c && c.r > 150 && c.b < 100;
const isBlue = (c) => c && c.b > 150 && c.r < 100;

const data = (p, key) => p.evaluate((k) => document.body.dataset[k], key);

// One check: a fresh browser context with the player page open on `token`; `body` fills in
// `result` and sets `result.ok`. A thrown error fails the check with the page's own error
// text beside it.
async function pageCheck(name, token, body) {
  const ctx = await browser.newContext();
  const p = await ctx.newPage();
  const started = Date.now();
  const result = { check: name, ok: false };
  try {
    await p.goto(`${base}/play/${session}?token=${encodeURIComponent(token)}`);
    await body(p, result);
  } catch (e) {
    result.error = String(e.message || e);
    result.shown = await data(p, "error").catch(() => null);
  }
  result.ms = Date.now() - started;
  report(result);
  await ctx.close();
}

// 1. Seek and pause from the page.
await pageCheck("player controls: seek bar and pause", steerToken, async (p, result) => {
  await waitFor("playing", async () => (await data(p, "playstate")) === "playing", 20000);
  await waitFor("the seek bar enabled", () => p.isEnabled("#seek"), 5000);
  result.before = await waitFor("a red picture", async () => {
    const c = await centreColour(p);
    return isRed(c) ? c : null;
  }, 10000);
  const seekAt = Date.now();
  await p.locator("#seek").fill("14");
  result.position = Number(await waitFor("position ≥ 14", async () => {
    const pos = Number(await data(p, "position"));
    return pos >= 14 && pos < 17 ? pos : null;
  }, 5000));
  result.after = await waitFor("a blue picture", async () => {
    const c = await centreColour(p);
    return isBlue(c) ? c : null;
  }, 5000);
  result.seekToBlueMs = Date.now() - seekAt;
  await p.click("#playpause");
  await waitFor("paused", async () => (await data(p, "playstate")) === "paused", 5000);
  const pausedAt = Number(await data(p, "position"));
  await new Promise((r) => setTimeout(r, 1000));
  result.pausedStill = Number(await data(p, "position")) === pausedAt;
  await p.click("#playpause");
  await waitFor("playing again", async () => (await data(p, "playstate")) === "playing", 5000);
  result.error = (await data(p, "error")) || null;
  result.ok = result.pausedStill && !result.error;
});

// 2. A view-only token: the page shows the controls disabled; the session plays on.
await pageCheck("player controls: view-only token", viewToken, async (p, result) => {
  await waitFor("playing", async () => (await data(p, "playstate")) === "playing", 20000);
  await waitFor("the status", async () => (await data(p, "scope")) === "view", 5000);
  result.seekDisabled = await p.isDisabled("#seek");
  result.pauseDisabled = await p.isDisabled("#playpause");
  result.ok = result.seekDisabled && result.pauseDisabled;
});

// 3. The gateway ends the viewer (an admin removes the session): the page says why, in words
// taken from the ended resource's 404, not "connection failed".
if (adminToken) {
  await pageCheck("player page: says why the gateway ended it", viewToken, async (p, result) => {
    await waitFor("playing", async () => (await data(p, "state")) === "playing", 20000);
    await waitFor("frames", async () => Number(await data(p, "frames")) > 0, 10000);
    const resp = await fetch(`${base}/api/sessions/${session}`, {
      method: "DELETE", headers: { Authorization: "Bearer " + adminToken } });
    result.deleteStatus = resp.status;
    const removed = Date.now();
    await waitFor("the ended state", async () => (await data(p, "state")) === "ended", 15000);
    result.afterMs = Date.now() - removed;
    result.error = await data(p, "error");
    result.ok = resp.status === 200 &&
      /^The stream ended: this WHEP resource ended \d+ s ago: .*the session was stopped/.test(result.error);
  });
}

await browser.close();
process.exit(failed ? 1 : 0);
