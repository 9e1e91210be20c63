// Headless Chromium plays a Wisp session's HLS with hls.js (npm) on a page of another origin,
// as a site embedding the stream would, and checks what it decoded.
// Usage: node chromium-hls.mjs BASE_URL TOKEN [SESSION] [SECONDS]
// The page loads BASE_URL/hls/SESSION/index.m3u8?token=TOKEN (the token then rides on every
// URI of the playlists Wisp serves), plays it muted, and the check waits until SECONDS
// (default 4) of media have played, and that the page saw every rendition (at least three).
// Prints one JSON line (what it played: renditions, size, frames, the level chosen); exits
// non-zero if it fails.

import { launchChromium, serveThirdPartyPage } from "./chromium.mjs";

const [base, token, session = "demo", secondsArg = "4"] = process.argv.slice(2);
if (!base || !token) {
  console.error("usage: node chromium-hls.mjs BASE_URL TOKEN [SESSION] [SECONDS]");
  process.exit(2);
}
const want = Number(secondsArg);

const page = `<!doctype html><meta charset="utf-8"><title>hls.js player</title>
<video id="v" autoplay playsinline muted></video>
<script src="/dist/hls.min.js"></script>
<script>
const params = new URLSearchParams(location.search);
window.hlsError = null;
window.levels = [];
const video = document.getElementById("v");
const hls = new Hls({ lowLatencyMode: false });
hls.on(Hls.Events.MANIFEST_PARSED, (_, data) => {
  window.levels = data.levels.map((l) => ({ width: l.width, height: l.height, codecs: l.codecSet }));
  video.play().catch(() => {});
});
hls.on(Hls.Events.ERROR, (_, data) => {
  if (data.fatal) window.hlsError = data.type + ": " + data.details;
});
hls.loadSource(params.get("src"));
hls.attachMedia(video);
window.hls = hls;
</script>`;

const { server, origin } = await serveThirdPartyPage(page, "dist/hls.min.js", "hls.js");
const browser = await launchChromium();
const result = { check: "Chromium + hls.js plays HLS", ok: false };
try {
  const p = await browser.newPage();
  const src = `${base}/hls/${session}/index.m3u8?token=${token}`;
  await p.goto(`${origin}/?src=${encodeURIComponent(src)}`);
  const deadline = Date.now() + 45_000;
  let state = {};
  while (Date.now() < deadline) {
    state = await p.evaluate(() => {
      const v = document.getElementById("v");
      const q = v.getVideoPlaybackQuality();
      return {
        error: window.hlsError,
        levels: window.levels,
        currentTime: v.currentTime,
        frames: q.totalVideoFrames,
        dropped: q.droppedVideoFrames,
        width: v.videoWidth,
        height: v.videoHeight,
        level: window.hls.currentLevel,
      };
    });
    if (state.error || state.currentTime >= want) break;
    await new Promise((r) => setTimeout(r, 250));
  }
  Object.assign(result, state, { origin });
  result.ok = !state.error && state.currentTime >= want && state.frames > 0 && state.width > 0
    && state.levels.length >= 3;
} catch (e) {
  result.error = String(e);
} finally {
  await browser.close();
  server.close();
}
console.log(JSON.stringify(result));
process.exit(result.ok ? 0 : 1);
