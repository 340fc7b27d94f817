"""Write the offline HTML template for ``dvc plots show`` (``.dvc/plots/offline.html``).

DVC's default page loads vega, vega-lite and vega-embed from a CDN, so on a machine without internet
`dvc plots show` renders a blank page. This template carries the three libraries inline, taken from
the npm registry at the pinned versions below (``npm pack``), and has no ``{scripts}`` placeholder, so
DVC adds no CDN tag. ``.dvc/config`` names it (``plots.html_template``). Re-run to change a version:
``python -m bench.plots_template [--out PATH]`` (needs ``npm`` and the registry; the result is committed).
"""
from __future__ import annotations

import argparse
import subprocess
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIBRARIES = {"vega": "5.33.1", "vega-lite": "5.23.0", "vega-embed": "6.29.0"}  # vega-lite 5: DVC's spec schema
PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    <title>DVC plots (offline: {versions})</title>
{libraries}
    <style> table {{ border-spacing: 15px; }} body {{ font-family: system-ui, sans-serif; }} </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def library_js(name: str, version: str, tmp: Path) -> str:
    """The minified build of one npm package, from the registry's tarball."""
    out = subprocess.run(["npm", "pack", f"{name}@{version}", "--silent", "--pack-destination", str(tmp)],
                         capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    with tarfile.open(tmp / out) as tar:
        member = tar.extractfile(f"package/build/{name}.min.js")
        return member.read().decode("utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / ".dvc" / "plots" / "offline.html")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        scripts = [f"    <script>/* {n}@{v} (npm) */\n{library_js(n, v, Path(tmp))}\n    </script>"
                   for n, v in LIBRARIES.items()]
    versions = ", ".join(f"{n} {v}" for n, v in LIBRARIES.items())
    page = PAGE.format(versions=versions, libraries="\n".join(scripts))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    part = a.out.with_suffix(".part")
    part.write_text(page, encoding="utf-8")
    part.replace(a.out)
    print(f"{a.out}: {len(page) / 1e6:.2f} MB ({versions})")


if __name__ == "__main__":
    main()
