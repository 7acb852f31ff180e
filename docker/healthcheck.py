#!/opt/lowtide/bin/python
"""Exit 0 when the component in this container answers GET /healthz with 200.

`lowtide-healthcheck [PORT]`: without PORT, the port the entrypoint recorded for the
component it started (platform 8081, activator 8080, agent 8082 by default).
"""

import sys
import urllib.request
from pathlib import Path

PORT_FILE = Path("/tmp/lowtide-health-port")


def main() -> int:
    port = sys.argv[1] if len(sys.argv) > 1 else PORT_FILE.read_text().strip()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=4) as r:
            return 0 if r.status == 200 else 1
    except OSError as exc:
        print(f"healthz on port {port}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
