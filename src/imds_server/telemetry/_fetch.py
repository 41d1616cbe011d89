"""``imds-server logs fetch``: stream filtered lines from a server's admin ``GET /logs``."""

from __future__ import annotations

import argparse
import sys

import httpx


def fetch_main(args: argparse.Namespace) -> int:
    params = {name: str(value) for name in ("since", "until", "level", "grep", "limit")
              if (value := getattr(args, name)) is not None}
    url = args.admin_url.rstrip("/") + "/logs"
    try:
        with httpx.stream("GET", url, params=params, timeout=args.timeout) as response:
            if response.status_code != 200:
                response.read()
                print(f"logs fetch: {url}: HTTP {response.status_code}: "
                      f"{response.text.strip()}", file=sys.stderr)
                return 2 if 400 <= response.status_code < 500 else 1
            out = sys.stdout.buffer
            for chunk in response.iter_bytes():
                out.write(chunk)
            out.flush()
    except httpx.HTTPError as error:
        print(f"logs fetch: {url}: {error or type(error).__name__}", file=sys.stderr)
        return 1
    return 0
