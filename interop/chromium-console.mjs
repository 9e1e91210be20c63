// Headless Chromium uses Wisp's web pages as a person would, against a real gateway: the
// console at / (an admin token pasted), a VOD session made there from a media file and
// watched from a share link it mints, a player opened on a live name before anyone publishes
// (it waits, then starts by itself), the publish page with the fake camera, two viewers that
// go offline when the publisher stops and live again when it starts, and the console's
// recording controls. Assertions are on visible text and on decoded frames (the player's
// frame count and video.getVideoPlaybackQuality()), never on screenshots; the screenshots
// are for people.
// Usage: node chromium-console.mjs BASE_URL ADMIN_TOKEN MEDIA_FILE SCREENSHOT_DIR
// Prints one JSON line per step (a to h) and one of every console error and failed request
// the pages had; exits 1 at the first failure (or after 3 minutes), and fails
// on any console error, failed request or 4xx/5xx answer the pages got that it did not expect.

import fs from "node:fs";
import path from "node:path";
import { launchChromium } from "./chromium.mjs";

const [base, adminToken, mediaFile, shots] = process.argv.slice(2);
if (!base || !adminToken || !mediaFile || !shots) {
  console.error("usage: node chromium-console.mjs BASE_URL ADMIN_TOKEN MEDIA_FILE SCREENSHOT_DIR");
  process.exit(2);
}
fs.mkdirSync(shots, { recursive: true });

const started = Date.now();
const suffix = Math.random().toString(36).slice(2, 7);
const vodName = "film-" + suffix;
const liveName = "cam-" + suffix;

let browser = null;
async function fail(step, message, extra = {}) {
  console.log(JSON.stringify({ step, ok: false, error: message, ...extra }));
  printProblems();
  if (browser) await browser.close().catch(() => {});
  process.exit(1);
}
setTimeout(() => fail("overall", "the test took more than 3 minutes"), 180000).unref();
// A Playwright call that throws (a click that found no button) fails the step under way.
let current = "a";
process.on("uncaughtException", (e) => fail(current, String(e.message || e).split("\n")[0]));

function report(step, seen) {
  current = "after " + step;
  console.log(JSON.stringify({ step, ok: true, s: Math.round((Date.now() - started) / 100) / 10, ...seen }));
}

// Polls `fn` until it returns something truthy; fails the step after `ms`.
async function waitFor(step, what, fn, ms, context = async () => ({})) {
  const until = Date.now() + ms;
  for (;;) {
    const v = await fn().catch(() => null);
    if (v) return v;
    if (Date.now() > until) await fail(step, "timed out waiting for " + what, await context().catch(() => ({})));
    await new Promise((r) => setTimeout(r, 150));
  }
}

// --- what the pages did that nobody asked for ------------------------------------------------

// Answers a page may get on purpose: a player on a live name waits on 404 (no session yet) and
// 409 (no publisher) for its WHEP POST. Everything else at 400 or over is a failure.
const expected = []; // { page, method, path: RegExp, statuses }
const problems = [];
const seenExpected = new Map(); // page label → statuses it got on purpose (for console lines)
const consoleErrors = [];       // every page's console errors, expected or not, for the record
const expectedAnswers = [];     // the 4xx answers the pages got on purpose
const offers = new Map();       // page label → WHEP/WHIP POSTs it made (a reconnect is one more)
let closing = false;

// Chromium logs every 4xx/5xx fetch as "Failed to load resource: … status of N"; those of
// answers the page got on purpose are not errors. (Judged late: the console line may come
// before the response event.)
function realProblems() {
  return problems.filter((p) => {
    const status = Number(((p.console || "").match(/Failed to load resource: .*status of (\d+)/) || [])[1]);
    return !(status && (seenExpected.get(p.page) || new Set()).has(status));
  });
}

function printProblems() {
  for (const p of realProblems()) console.log(JSON.stringify({ problem: p }));
  console.log(JSON.stringify({ pages: { consoleErrors, failedRequests: problems.filter((p) => p.requestfailed),
    expectedAnswers } }));
}

function watch(page, label) {
  page.on("request", (r) => {
    if (r.method() === "POST" && /^\/wh[ei]p\//.test(new URL(r.url()).pathname)) {
      offers.set(label, (offers.get(label) || 0) + 1);
    }
  });
  page.on("console", (m) => {
    if (closing || m.type() !== "error") return;
    consoleErrors.push(label + ": " + m.text());
    problems.push({ page: label, console: m.text(), at: m.location().url });
  });
  page.on("pageerror", (e) => { if (!closing) problems.push({ page: label, pageerror: String(e) }); });
  page.on("requestfailed", (r) => {
    if (closing) return;
    problems.push({ page: label, requestfailed: r.method() + " " + r.url(), why: r.failure()?.errorText });
  });
  page.on("response", (r) => {
    if (closing || r.status() < 400) return;
    const req = r.request();
    const url = new URL(r.url());
    const ok = expected.some((e) => e.page === label && e.method === req.method() &&
      e.path.test(url.pathname) && e.statuses.includes(r.status()));
    if (ok) {
      expectedAnswers.push(`${label}: ${req.method()} ${url.pathname} → ${r.status()}`);
      if (!seenExpected.has(label)) seenExpected.set(label, new Set());
      seenExpected.get(label).add(r.status());
      return;
    }
    problems.push({ page: label, unexpected: `${req.method()} ${url.pathname} → ${r.status()}` });
  });
}

// Fails the step if a page did something unexpected so far.
async function noProblems(step) {
  const real = realProblems();
  if (real.length) await fail(step, "the pages had errors or unexpected answers", { problems: real.length });
}

// --- page reading --------------------------------------------------------------------------

const data = (p, key) => p.evaluate((k) => document.body.dataset[k], key);
const text = (p, selector) => p.locator(selector).first().innerText();

// The player's view: its state as shown, the note beside it, decoded frames two ways.
function playerView(p) {
  return p.evaluate(() => {
    const v = document.getElementById("video");
    const q = v.getVideoPlaybackQuality ? v.getVideoPlaybackQuality() : { totalVideoFrames: 0 };
    return {
      state: document.getElementById("state").textContent,
      note: document.getElementById("note").textContent,
      error: document.getElementById("error").textContent,
      frames: Number(document.body.dataset.frames || 0),
      videoFrames: q.totalVideoFrames,
      size: v.videoWidth + "x" + v.videoHeight,
      latency: document.body.dataset.latency ? Number(document.body.dataset.latency) : null,
      live: !document.getElementById("live").classList.contains("hidden"),
      seekShown: !document.getElementById("seek").classList.contains("hidden"),
      unmuteShown: !document.getElementById("unmute").classList.contains("hidden"),
      states: window.__states || [],
    };
  });
}

// Waits until a player shows `state` (visible text, and the dataset beside it) with more than
// `frames` decoded frames.
async function playerAt(step, p, state, frames) {
  return waitFor(step, `the player to show "${state}" with more than ${frames} frames`, async () => {
    const v = await playerView(p);
    return v.state === state && (await data(p, "state")) === state && v.frames > frames &&
      v.videoFrames > frames ? v : null;
  }, 30000, () => playerView(p));
}

// The console's card of a session, as text.
const card = (p, name) => p.locator(`article.session[data-name="${name}"]`);

// --- the run ---------------------------------------------------------------------------------

browser = await launchChromium();
const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
// Every page records the states its body went through (for the report: "waiting" then "live").
await ctx.addInitScript(() => {
  window.__states = [];
  new MutationObserver(() => {
    const s = document.body && document.body.dataset.state;
    if (s && window.__states[window.__states.length - 1] !== s) window.__states.push(s);
  }).observe(document, { attributes: true, subtree: true, attributeFilter: ["data-state"] });
});

// a. The console: paste the admin token, see the sessions (the demo among them).
const consolePage = await ctx.newPage();
watch(consolePage, "console");
await consolePage.goto(base + "/");
await consolePage.locator("#tokenin").fill(adminToken);
await consolePage.getByRole("button", { name: "Use token" }).click();
await waitFor("a", "the admin view", async () => (await data(consolePage, "mode")) === "admin", 10000);
await waitFor("a", "the demo session listed", () => card(consolePage, "demo").isVisible(), 10000);
const demoText = await card(consolePage, "demo").innerText();
if (!/\bvod\b/i.test(demoText)) await fail("a", "the demo's card does not say vod", { demoText });
report("a", {
  who: await text(consolePage, "#who"),
  sessions: await consolePage.locator("article.session").evaluateAll((a) => a.map((x) => x.dataset.name)),
  demo: demoText.split("\n").slice(0, 2).join(" | "),
});
await noProblems("a");

// b. A VOD session from the media file; a viewer link minted for it plays.
await consolePage.locator("#c-name").fill(vodName);
await consolePage.locator("#c-url").fill(mediaFile);
await consolePage.locator("#c-width").fill("640");
await consolePage.locator("#c-height").fill("360");
await consolePage.getByRole("button", { name: "Create" }).click();
await waitFor("b", "the create form to say created", async () =>
  (await text(consolePage, "#c-msg")).startsWith("Created " + vodName), 10000,
  async () => ({ shown: await text(consolePage, "#c-msg") }));
await waitFor("b", "the new session listed", () => card(consolePage, vodName).isVisible(), 10000);
const vodCard = card(consolePage, vodName);
await vodCard.getByRole("button", { name: "Share…" }).click();
await vodCard.getByLabel("steer playback").check();
await vodCard.getByRole("button", { name: "Mint viewer link" }).click();
const vodLink = await waitFor("b", "a player link", () =>
  vodCard.locator('a[data-link="Player"]').getAttribute("href"), 10000);
const vodPlayer = await ctx.newPage();
watch(vodPlayer, "player (vod)");
await vodPlayer.goto(vodLink);
const vodSeen = await playerAt("b", vodPlayer, "playing", 30);
await waitFor("b", "the console to count the viewer", async () =>
  /\b1 viewer\b/.test(await vodCard.innerText()), 10000, async () => ({ card: await vodCard.innerText() }));
await vodPlayer.screenshot({ path: path.join(shots, "player-vod.png") });
report("b", {
  session: vodName, link: vodLink.replace(/token=[^&]+/, "token=…"),
  card: (await vodCard.innerText()).split("\n").slice(0, 2).join(" | "),
  player: { state: vodSeen.state, frames: vodSeen.frames, videoFrames: vodSeen.videoFrames, size: vodSeen.size,
    seekShown: vodSeen.seekShown, unmuteShown: vodSeen.unmuteShown, states: vodSeen.states },
});
await noProblems("b");

// b2. The console's egress controls: record the VOD session to MP4, see it run, stop it.
await vodCard.getByRole("button", { name: "Egress…" }).click();
await vodCard.locator(".egress select").selectOption("record:mp4");
await vodCard.locator(".egress").getByRole("button", { name: "Start" }).click();
const recording = await waitFor("b2", "a running recording listed", async () => {
  const li = vodCard.locator('.egresses li[data-state="running"]').first();
  return (await li.count()) && Number((await li.innerText()).match(/([\d.]+) s\b/)?.[1] || 0) > 1
    ? li.innerText() : null;
}, 20000, async () => ({ list: await vodCard.locator(".egresses").innerText() }));
await vodCard.locator('.egresses li[data-state="running"]').first().getByRole("button", { name: "Stop" }).click();
const stopped = await waitFor("b2", "the recording stopped", async () => {
  const li = vodCard.locator('.egresses li[data-state="stopped"]').first();
  return (await li.count()) ? li.innerText() : null;
}, 20000, async () => ({ list: await vodCard.locator(".egresses").innerText() }));
report("b2", { running: recording.replace(/^Stop\s*/, ""), stopped });
await noProblems("b2");

// c. A viewer link for a live name nobody publishes to yet: the player waits by itself.
const golive = consolePage.locator("#golive");
await consolePage.locator("#g-name").fill(liveName);
await golive.getByRole("button", { name: "Mint viewer link" }).click();
const liveLink = await waitFor("c", "a player link for the live name", () =>
  golive.locator('a[data-link="Player"]').getAttribute("href"), 10000);
const waiter = await ctx.newPage();
watch(waiter, "player (early)");
// Waiting is a WHEP POST answered 404 (no session of that name yet) or 409 (no publisher).
expected.push({ page: "player (early)", method: "POST", path: new RegExp(`^/whep/${liveName}$`),
  statuses: [404, 409] });
await waiter.goto(liveLink);
const waiting = await waitFor("c", "the player to show waiting", async () => {
  const v = await playerView(waiter);
  return v.state === "waiting" && /^Waiting for/.test(v.note) ? v : null;
}, 10000, () => playerView(waiter));
report("c", { session: liveName, state: waiting.state, note: waiting.note, frames: waiting.frames });
await noProblems("c");

// d. Publish links; the publish page sends the fake camera; both viewers play it live.
await golive.getByRole("button", { name: "Mint publish link" }).click();
const publishLink = await waitFor("d", "a publish page link", () =>
  golive.locator('a[data-link="Publish page"]').getAttribute("href"), 10000);
const rows = await golive.locator(".links .label").allInnerTexts();
for (const want of ["Publish page", "Player", "WHIP URL", "Bearer token"]) {
  if (!rows.includes(want)) await fail("d", "the publish links lack " + want, { rows });
}
const publisher = await ctx.newPage();
watch(publisher, "publish page");
await publisher.goto(publishLink);
await publisher.getByRole("button", { name: "Start" }).click();
const publishing = await waitFor("d", "the publish page to say publishing with bits going out", async () =>
  (await text(publisher, "#state")) === "publishing" && Number(await data(publisher, "bitrate")) > 50000
    ? { state: "publishing", bitrate: Number(await data(publisher, "bitrate")),
        shown: await text(publisher, "#bitrate") }
    : null,
  20000, async () => ({ state: await text(publisher, "#state"), error: await text(publisher, "#error") }));
await waitFor("d", "the console to list the live session", async () => {
  const c = card(consolePage, liveName);
  return (await c.count()) && (await c.getAttribute("data-kind")) === "live" &&
    (await c.getAttribute("data-state")) === "live" && /ingest WHIP/.test(await c.innerText());
}, 15000, async () => ({ list: await text(consolePage, "#list") }));
const liveCard = (await card(consolePage, liveName).innerText()).split("\n").slice(0, 2).join(" | ");
// The publish page puts H.264 constrained baseline (mode 1) first in its offer.
publishing.offerFirst = await publisher.evaluate(() => {
  const sdp = window.wispPeer.localDescription.sdp;
  const pt = sdp.match(/m=video \d+ [A-Z/]+ (\d+)/)[1];
  return (sdp.match(new RegExp(`a=rtpmap:${pt} (.*)`)) || [])[1] + " " +
    (sdp.match(new RegExp(`a=fmtp:${pt} (.*)`)) || [])[1];
});
if (!/^H264\/90000 .*packetization-mode=1.*profile-level-id=42e0/.test(publishing.offerFirst)) {
  await fail("d", "the publish offer does not put H.264 constrained baseline first", publishing);
}
const early = await playerAt("d", waiter, "live", 30);
const shareLink = await publisher.locator("#viewlink").getAttribute("href");
const second = await ctx.newPage();
watch(second, "player (second)");
await second.goto(shareLink);
const secondSeen = await playerAt("d", second, "live", 30);
await consolePage.screenshot({ path: path.join(shots, "console.png"), fullPage: true });
await publisher.screenshot({ path: path.join(shots, "publish.png") });
await second.screenshot({ path: path.join(shots, "player-live.png") });
report("d", {
  publisher: publishing, console: liveCard, links: rows,
  early: { state: early.state, frames: early.frames, videoFrames: early.videoFrames, latency: early.latency,
    live: early.live, seekShown: early.seekShown, states: early.states },
  second: { state: secondSeen.state, frames: secondSeen.frames, size: secondSeen.size, latency: secondSeen.latency },
});
await noProblems("d");

// e. The publisher stops: both viewers show offline, connected; it starts again: live, with
// frames on the same connections.
await publisher.getByRole("button", { name: "Stop" }).click();
await waitFor("e", "the publish page to say stopped",
  async () => (await text(publisher, "#state")) === "stopped", 10000);
const offersBefore = [offers.get("player (early)"), offers.get("player (second)")];
const offline = [];
for (const p of [waiter, second]) {
  offline.push(await waitFor("e", "a viewer to show offline", async () => {
    const v = await playerView(p);
    return v.state === "offline" && /publisher is offline/.test(v.note) ? v : null;
  }, 30000, () => playerView(p)));
}
await second.screenshot({ path: path.join(shots, "player-offline.png") });
// A viewer who comes now finds the session without publisher: 409, and it waits.
const late = await ctx.newPage();
watch(late, "player (late)");
expected.push({ page: "player (late)", method: "POST", path: new RegExp(`^/whep/${liveName}$`), statuses: [409] });
await late.goto(shareLink);
const lateWaiting = await waitFor("e", "the late player to show waiting for the publisher", async () => {
  const v = await playerView(late);
  return v.state === "waiting" && v.note === "Waiting for the publisher…" ? v : null;
}, 10000, () => playerView(late));
await publisher.getByRole("button", { name: "Start" }).click();
await waitFor("e", "the publish page to say publishing again", async () =>
  (await text(publisher, "#state")) === "publishing", 20000,
  async () => ({ state: await text(publisher, "#state"), error: await text(publisher, "#error") }));
const back = [];
for (const [i, p] of [waiter, second].entries()) back.push(await playerAt("e", p, "live", offline[i].frames + 30));
const lateLive = await playerAt("e", late, "live", 30);
// Back on the same connections: no new offer from either.
const offersAfter = [offers.get("player (early)"), offers.get("player (second)")];
if (offersAfter.join() !== offersBefore.join()) await fail("e", "a viewer reconnected", { offersBefore, offersAfter });
report("e", {
  offline: offline.map((v) => ({ state: v.state, note: v.note, frames: v.frames })),
  back: back.map((v, i) => ({ state: v.state, frames: v.frames, more: v.frames - offline[i].frames,
    states: v.states })),
  late: { waiting: lateWaiting.note, state: lateLive.state, frames: lateLive.frames, states: lateLive.states },
  offers: { early: offersAfter[0], second: offersAfter[1] },
});
await noProblems("e");

// f. The screenshots taken above.
const files = fs.readdirSync(shots).filter((f) => f.endsWith(".png")).sort();
for (const want of ["console.png", "player-vod.png", "player-live.png", "publish.png", "player-offline.png"]) {
  if (!files.includes(want)) await fail("f", "no screenshot " + want, { files });
}
report("f", { dir: shots, files });

// g. Every page stops with its Stop button: each DELETE of its own resource is answered 200
// (a 404 here was the player's DELETE racing its own DTLS close).
const deletes = {};
for (const [label, p, selector] of [["publish page", publisher, "#toggle"], ["player (vod)", vodPlayer, "#stop"],
  ["player (early)", waiter, "#stop"], ["player (second)", second, "#stop"], ["player (late)", late, "#stop"]]) {
  const answer = p.waitForResponse((r) => r.request().method() === "DELETE", { timeout: 10000 })
    .catch(() => null);
  await p.locator(selector).click();
  const r = await answer;
  await waitFor("g", label + " to say stopped", async () => (await text(p, "#state")) === "stopped", 10000);
  deletes[label] = r ? r.status() : null;
  if (deletes[label] !== 200) await fail("g", label + "'s DELETE was not answered 200", { deletes });
}
await noProblems("g");
report("g", { deletes });

// h. The console stops the VOD session (two clicks, no dialog): its card goes.
await vodCard.getByRole("button", { name: "Stop", exact: true }).click();
const armed = await vodCard.locator("button.danger").first().innerText();
await vodCard.locator("button.danger").first().click();
await waitFor("h", "the stopped session's card to go", async () => (await vodCard.count()) === 0, 10000);
const left = await consolePage.locator("article.session").evaluateAll((a) => a.map((x) => x.dataset.name));
report("h", { armed, left });
await noProblems("h");
printProblems();
closing = true;
await browser.close();
process.exit(0);
