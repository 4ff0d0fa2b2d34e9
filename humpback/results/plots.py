"""`dvc plots` that render offline: an HTML template with Vega, Vega-Lite and vega-embed inlined.

DVC's page loads the three libraries from a CDN (dvc_render.vega.VegaRenderer.SCRIPTS) through the
template's `{scripts}` placeholder. Our template has no `{scripts}`, so those tags are never inserted,
and carries instead the self-contained bundle that vl-convert-python ships. dvc_render only requires
`{plot_divs}` (dvc_render.html.HTML); `{refresh_tag}` keeps `dvc plots show --refresh` working.

The template is generated at run time into the cache directory (nearly 1 MB of JS we do not commit),
from templates/dvc-plots.html and templates/dvc-plots.js.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess

from .. import HumpbackError
from .render import source

# The page is dvc_render's template (its `{plot_divs}` and `{refresh_tag}`), not a Jinja one: we
# only put the bundle and the wrapper in its two `<script>`s.
PAGE = source("dvc-plots.html")

# DVC's divs call `vegaEmbed('#id', spec)` with no options. Draw SVG (crisp, text stays text), drop the
# menu entry that opens the online editor, and record the outcome on the div: a failed plot shows its
# error in the page instead of only in the console.
WRAPPER = source("dvc-plots.js")


def _cache_root() -> str:
    # Same root as humpback.models.cache_dir, not imported from there: that module imports torch.
    return os.environ.get("HUMPBACK_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "humpback")


def vegalite_version() -> str | None:
    """The newest Vega-Lite in vl-convert with the major version of the one DVC's page loads: DVC's
    templates declare that version's schema. None (vl-convert's default) if there is none."""
    import vl_convert
    from dvc_render.vega import VegaRenderer

    m = re.search(r"vega-lite@(\d+)\.", VegaRenderer.SCRIPTS)
    major = m.group(1) if m else None
    same = [v for v in vl_convert.get_vegalite_versions() if v.split(".")[0] == major]
    return max(same, key=lambda v: tuple(int(p) for p in v.split("."))) if same else None


def template_html() -> str:
    import vl_convert

    bundle = vl_convert.javascript_bundle(vl_version=vegalite_version())
    bundle = bundle.replace("</script", "<\\/script")  # cannot close the inline <script> early
    return PAGE.replace("@BUNDLE@", bundle).replace("@WRAPPER@", WRAPPER)


def template_path() -> str:
    """Path of the offline template, written on first use."""
    import importlib.metadata

    try:
        version = importlib.metadata.version("vl-convert-python")
    except importlib.metadata.PackageNotFoundError:
        raise HumpbackError("vl-convert-python is not installed: pip install vl-convert-python") from None
    # Keyed by what the file is made of, so that a new vl-convert or a change here makes a new one.
    key = hashlib.sha256(f"{version}|{vegalite_version()}|{PAGE}|{WRAPPER}".encode()).hexdigest()[:12]
    path = os.path.join(_cache_root(), "plots", f"dvc-plots-offline-{key}.html")
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(template_html())
        os.replace(tmp, path)  # atomic: a concurrent reader never sees half a template
    return path


def run_dvc_plots(action: str, dvc_args: list[str]) -> int:
    """`dvc plots show|diff ARGS --html-template <offline template>`; returns dvc's exit code."""
    if "--html-template" in dvc_args:
        raise HumpbackError("--html-template is set by `humpback plots`; use `dvc plots` to pass your own")
    cmd = ["dvc", "plots", action, *dvc_args, "--html-template", template_path()]
    try:
        return subprocess.run(cmd).returncode
    except FileNotFoundError:
        raise HumpbackError("dvc not found on PATH") from None


def main(action: str, dvc_args: list[str]) -> int:
    if action == "template":
        print(template_path())
        return 0
    return run_dvc_plots(action, dvc_args)

