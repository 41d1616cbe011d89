"""``imds-server logs fetch``: stream filtered lines from a server's admin ``GET /logs``."""

from __future__ import annotations

import argparse
import json
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
                      f"{_reason(response.text)}", file=sys.stderr)
                return 2 if 400 <= response.status_code < 500 else 1
            out = sys.stdout.buffer
            for chunk in response.iter_bytes():
                out.write(chunk)
            out.flush()
    except httpx.HTTPError as error:
        print(f"logs fetch: {url}: {error or type(error).__name__}", file=sys.stderr)
        return 1
    return 0


def _reason(body: str) -> str:
    """The ``error`` of an admin JSON error body (else the body as it came)."""
    try:
        value = json.loads(body)
    except ValueError:
        return body.strip()
    return str(value["error"]) if isinstance(value, dict) and "error" in value \
        else body.strip()
