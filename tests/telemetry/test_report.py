"""``logs report --html``: the page opened in headless Chromium renders its charts, and
the numbers behind every chart equal a direct DuckDB query of the same lines."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import trio

from imds_server.telemetry import compact_store, render_access, store_batch
from imds_server.telemetry._report import CHARTS, MISSING, report_data

from .._tools import require_tool
from .conftest import access, run_command

BASE = 1_714_521_600  # 2024-05-01T00:00:00Z
SCREENSHOTS = Path(tempfile.gettempdir()) / "imds-report-screenshots"


def make_store(store: Path, raw: Path) -> None:
    """Two clusters over two days, probe lines for c1 only; first day compacted. Every line
    also goes to ``raw`` (one JSON-lines file) for the direct query."""
    all_lines: list[str] = []
    for day in range(2):
        for c, cluster in enumerate(("c1", "c2")):
            for hour in range(0, 24, 3):
                when = BASE + day * 86_400 + hour * 3600
                lines = [render_access(access(
                    time=when + n, request_id=f"{cluster}-{day}-{hour}-{n}",
                    route=("/metadata/instance", "/metadata/identity/oauth2/token",
                           "/metadata/scheduledevents")[n % 3 if c == 0 else n % 2],
                    api_version=("2021-02-01", "2019-06-04", "2023-07-01", "bogus")[n % 4],
                    status=(200, 200, 200, 404, 400, 503)[(n + hour) % 6],
                    seconds=0.0001 * (1 + (n * 7 + hour * (c + 1)) % 40)))
                    for n in range(30 + hour)]
                if cluster == "c1":
                    lines += [json.dumps({"time": f"2024-05-0{day + 1}T{hour:02d}:{m:02d}:00Z",
                                          "level": "info", "logger": "imds_server.probe",
                                          "success": not (hour == 9 and m < 30 and day == 1),
                                          "seconds": 0.001, "status": 200, "error": None})
                              for m in range(0, 60, 10)]
                batch = f"{int((when + 120) * 1e9):020d}-{day}{c}{hour:02d}{'0' * 12}"
                assert store_batch(store, cluster, "m1", batch,
                                   gzip.compress(("\n".join(lines) + "\n").encode()))
                all_lines += lines
        if day == 0:
            compact_store(store)
    raw.write_text("\n".join(all_lines) + "\n")


def direct(raw: Path) -> dict[str, dict[str, Any]]:
    """The same numbers straight from the raw lines (no store, no view)."""
    import duckdb

    with duckdb.connect() as con:
        con.execute(f"CREATE TABLE l AS SELECT * FROM read_json('{raw}', format="
                    "'newline_delimited', columns={'time': 'TIMESTAMP', 'logger': 'VARCHAR', "
                    "'route': 'VARCHAR', 'api_version': 'VARCHAR', 'status': 'INTEGER', "
                    "'seconds': 'DOUBLE', 'watch': 'BOOLEAN', 'success': 'BOOLEAN', "
                    "'request_id': 'VARCHAR'})")
        con.execute("ALTER TABLE l ADD COLUMN cluster VARCHAR")
        con.execute("UPDATE l SET cluster = CASE WHEN request_id LIKE 'c2-%' THEN 'c2' "
                    "ELSE 'c1' END")
        acc = "logger = 'imds_server.access'"
        out: dict[str, dict[str, Any]] = {}
        for cluster in ("c1", "c2"):
            q = {
                "latency": f"SELECT strftime(time_bucket(INTERVAL '1 hour', time), "
                           f"'%Y-%m-%dT%H:%M:%SZ'), round(quantile_cont(seconds, 0.9) * 1000, 4)"
                           f" FROM l WHERE {acc} AND cluster = ? GROUP BY 1 ORDER BY 1",
                "status": f"SELECT status, count(*) FROM l WHERE {acc} AND cluster = ? "
                          "GROUP BY 1 ORDER BY 1",
                "routes": f"SELECT route, count(*) FROM l WHERE {acc} AND cluster = ? "
                          "GROUP BY 1 ORDER BY 2 DESC, 1",
                "api_versions": f"SELECT api_version, count(*) FROM l WHERE {acc} AND "
                                "cluster = ? GROUP BY 1 ORDER BY 2 DESC, 1",
                "uptime": "SELECT strftime(time_bucket(INTERVAL '1 hour', time), "
                          "'%Y-%m-%dT%H:%M:%SZ'), round(avg(success::INTEGER), 6) FROM l "
                          "WHERE logger = 'imds_server.probe' AND cluster = ? GROUP BY 1 "
                          "ORDER BY 1",
            }
            out[cluster] = {k: [list(r) for r in con.execute(v, [cluster]).fetchall()]
                            for k, v in q.items()}
            if not out[cluster]["uptime"]:
                out[cluster]["uptime"] = None
    return out


def embedded(page: str) -> dict[str, Any]:
    match = re.search(r'<script type="application/json" id="report-data">(.*?)</script>',
                      page, re.S)
    assert match
    data: dict[str, Any] = json.loads(match.group(1))
    return data


def test_numbers_behind_the_charts_equal_a_direct_query(tmp_path: Path) -> None:
    make_store(tmp_path / "store", tmp_path / "raw.jsonl")
    data = report_data([tmp_path / "store"], [])
    assert data["bucket"] == "1 hour"
    assert data["clusters"] == direct(tmp_path / "raw.jsonl")
    uptime = dict(data["clusters"]["c1"]["uptime"])
    assert uptime["2024-05-02T09:00:00Z"] == 0.5  # 3 of 6 probes failed that hour
    assert set(uptime.values()) == {0.5, 1.0}
    assert data["clusters"]["c2"]["uptime"] is None


@pytest.mark.integration
async def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    from PIL import Image, ImageStat

    chromium = require_tool("chromium", "chromium")
    make_store(tmp_path / "store", tmp_path / "raw.jsonl")
    out = tmp_path / "report.html"
    result = await run_command(["logs", "report", "--store", str(tmp_path / "store"),
                                "--since", "2024-05-01T00:00:00Z", "--until", "2024-05-03",
                                "--html", str(out)], seconds=120)
    assert result.returncode == 0, result.stderr
    assert b"2 clusters, 9 charts" in result.stdout
    page = out.read_text()
    assert embedded(page)["clusters"] == direct(tmp_path / "raw.jsonl")
    # Self-contained: nothing to fetch (SVG namespaces are names, not requests).
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)
    assert "<link" not in page
    assert "<script src" not in page
    assert page.count("<svg") == 9
    SCREENSHOTS.mkdir(exist_ok=True)
    shot = SCREENSHOTS / "report.png"
    shot.unlink(missing_ok=True)
    profile = tmp_path / "chromium-profile"
    with trio.fail_after(120):
        done = await trio.run_process(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={profile}", "--hide-scrollbars",
             "--window-size=1280,1800", f"--screenshot={shot}", out.as_uri()],
            capture_stdout=True, capture_stderr=True, check=False)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    image = Image.open(shot).convert("L")
    assert image.size == (1280, 1800)
    # The layout is fixed (CSS): header 72 px, per cluster a 36 px title then 600x330 cells
    # in two columns from x = 16. Inside every chart's cell (inset, so a pixel of layout
    # drift does not matter) something is drawn; the empty sixth cell of c1 and the page
    # right of the grid are blank (so the check can tell).
    c1 = [(16 + 600 * (n % 2), 108 + 330 * (n // 2)) for n in range(6)]
    c2 = [(16 + 600 * (n % 2), 108 + 330 * 3 + 36 + 330 * (n // 2)) for n in range(4)]
    for x, y in c1[:5] + c2:
        region = image.crop((x + 60, y + 40, x + 560, y + 290))
        stat = ImageStat.Stat(region)
        assert stat.stddev[0] > 15, ((x, y), stat.stddev)  # lines, bars, ticks, labels
        assert len(region.getcolors(maxcolors=256) or []) > 20, (x, y)
    x, y = c1[5]
    for box in [(x + 60, y + 40, x + 560, y + 290), (1220, 100, 1280, 1700)]:
        assert ImageStat.Stat(image.crop(box)).stddev[0] < 1, box


async def test_missing_store_and_bad_filters_are_one_line(tmp_path: Path) -> None:
    result = await run_command(["logs", "report", "--store", str(tmp_path), "--html",
                                str(tmp_path / "x.html")])
    assert result.returncode == 2
    assert result.stderr.decode().strip() == (
        "logs report: no log files found in the given --store/--local directories")
    bad = await run_command(["logs", "report", "--store", str(tmp_path), "--since", "soon",
                             "--html", str(tmp_path / "x.html")])
    assert bad.returncode == 2
    assert len(bad.stderr.decode().strip().splitlines()) == 1
    assert not (tmp_path / "x.html").exists()


def test_without_matplotlib_the_error_says_what_to_install(tmp_path: Path) -> None:
    script = ("import sys; sys.modules['matplotlib'] = None\n"
              "from imds_server.telemetry.__main__ import main\n"
              f"sys.exit(main(['logs', 'report', '--store', {str(tmp_path)!r}, '--html', "
              f"{str(tmp_path / 'x.html')!r}]))\n")
    import sys

    done = subprocess.run([sys.executable, "-c", script], capture_output=True, check=False)
    assert done.returncode == 2
    assert done.stderr.decode() == f"logs report: {MISSING}\n"
    assert CHARTS[0] == "latency"
