"""Renders the interop matrix (docs/interop.md) from the cells the interop checks recorded.

Usage: python3 matrix.py CELLS.jsonl
Each line of CELLS.jsonl is {"cell": [CLIENT, FEATURE], "ok": bool, ...}; a cell checked more
than once passes only if every check passed. Cells no check covers say why.
"""

import json
import sys

CLIENTS = [
    "Chromium + whip-whep WHIPClient",
    "Chromium + whip-whep WHEPClient",
    "Chromium + Wisp player page",
    "aiortc (publisher)",
    "aiortc (viewer)",
    "whep-client",
]
FEATURES = ["WHIP", "WHEP", "trickle", "ICE restart", "data channel", "layers"]

# Why a cell has no check: the client does not do that.
NOT_APPLICABLE = {
    ("Chromium + whip-whep WHIPClient", "WHEP"): "publisher",
    ("Chromium + whip-whep WHIPClient", "data channel"): "WHIPClient opens none",
    ("Chromium + whip-whep WHEPClient", "WHIP"): "player",
    ("Chromium + whip-whep WHEPClient", "data channel"): "WHEPClient opens none",
    ("Chromium + Wisp player page", "WHIP"): "player",
    ("Chromium + Wisp player page", "trickle"): "gathers before the POST",
    ("Chromium + Wisp player page", "ICE restart"): "the page does none; reload to reconnect",
    ("aiortc (publisher)", "WHEP"): "publisher",
    ("aiortc (publisher)", "trickle"): "aiortc has no trickle ICE",
    ("aiortc (publisher)", "ICE restart"): "aiortc has no ICE restart",
    ("aiortc (publisher)", "data channel"): "publishers get no control channel",
    ("aiortc (viewer)", "WHIP"): "viewer",
    ("aiortc (viewer)", "trickle"): "aiortc has no trickle ICE",
    ("aiortc (viewer)", "ICE restart"): "aiortc has no ICE restart",
    ("whep-client", "WHIP"): "viewer",
    ("aiortc (publisher)", "layers"): "aiortc sends no simulcast",
    ("aiortc (viewer)", "layers"): "not checked: it gets the gateway's choice like any viewer",
}


def main(path):
    results = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            rec = json.loads(line)
            if "cell" not in rec:
                continue
            key = tuple(rec["cell"])
            results.setdefault(key, []).append(bool(rec.get("ok")))
    unknown = [k for k in results if k[0] not in CLIENTS or k[1] not in FEATURES]
    if unknown:
        print(f"matrix.py: cells outside the matrix: {unknown}", file=sys.stderr)
        return 2
    print("| client | " + " | ".join(FEATURES) + " |")
    print("|---|" + "---|" * len(FEATURES))
    failed = False
    for client in CLIENTS:
        row = []
        for feature in FEATURES:
            checks = results.get((client, feature))
            if checks:
                ok = all(checks)
                failed |= not ok
                n = f" ×{len(checks)}" if len(checks) > 1 else ""
                row.append(("pass" if ok else "**FAIL**") + n)
            else:
                why = NOT_APPLICABLE.get((client, feature))
                if why is None:
                    row.append("**not run**")
                    failed = True
                else:
                    row.append(f"— ({why})")
        print(f"| {client} | " + " | ".join(row) + " |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
