"""Write an HTML template for `dvc plots show` with Vega, Vega-Lite and Vega-Embed inlined: plots render offline.

DVC's own page loads the three libraries from a CDN, so without network it is blank. The `vl-convert-python` wheel
(PyPI) carries all three, bundled, and nothing else is fetched at run time:

    pip install vl-convert-python            # once, into the project's environment
    python pipelines/offline_plots.py        # writes .dvc/tmp/plots-offline.html (git-ignored by DVC)
    dvc plots show --html-template .dvc/tmp/plots-offline.html

The template has no `{scripts}` placeholder, which is where DVC would put its CDN <script> tags.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_OUT = Path(".dvc/tmp/plots-offline.html")
PAGE = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
<title>LEADRE plots (dvc plots show, offline)</title>
<script>
{bundle}
</script>
<style>body {{ font-family: sans-serif; }} table {{ border-spacing: 15px; }}</style>
</head>
<body>
{{plot_divs}}
</body>
</html>
"""


def offline_template() -> str:
    """The page, or a one-line error naming the missing package."""
    try:
        import vl_convert
    except ImportError:
        raise SystemExit("error: vl-convert-python is not installed (`pip install vl-convert-python`: its wheel "
                         "carries Vega, Vega-Lite and Vega-Embed)") from None
    # the default snippet puts vegaEmbed, vega and vegaLite on `window`, where DVC's inline calls look for them
    return PAGE.format(bundle=vl_convert.javascript_bundle())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"where to write it (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    from leadre.io import atomic_file

    page = offline_template()
    with atomic_file(args.out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    print(f"wrote {args.out}: `dvc plots show --html-template {args.out}` renders without network")
    return 0


if __name__ == "__main__":
    sys.exit(main())
