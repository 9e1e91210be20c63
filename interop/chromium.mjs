// Headless Chromium as the interop checks run it: Debian's binary (or $CHROMIUM), loopback
// WebRTC allowed, real host candidates instead of mDNS names (inside `unshare -n`).
import http from "node:http";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));

// Serves `page` at every path but `/<script>`, which is that file of the whip-whep package, on
// an origin of its own (a free port on 127.0.0.1). Resolves to the server and its origin.
export async function serveThirdPartyPage(page, script) {
  const server = http.createServer((req, res) => {
    if (req.url.startsWith(`/${script}`)) {
      res.writeHead(200, { "Content-Type": "text/javascript" });
      res.end(fs.readFileSync(path.join(here, "node_modules/whip-whep", script)));
    } else {
      res.writeHead(200, { "Content-Type": "text/html" });
      res.end(page);
    }
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return { server, origin: `http://127.0.0.1:${server.address().port}` };
}

export function launchChromium() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: [
      "--headless", "--no-sandbox", "--disable-gpu",
      "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
      "--allow-loopback-in-peer-connection", "--disable-background-networking",
      "--disable-features=WebRtcHideLocalIpsWithMdns", "--autoplay-policy=no-user-gesture-required",
    ],
  });
}
