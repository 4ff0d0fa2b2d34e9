"""`humpback`: see and share the results of a run.

  humpback plots show|diff [DVC ARGS]    `dvc plots` with Vega inlined, so the page renders offline
  humpback plots template                print the path of that offline HTML template
  humpback publish --namespace NS        upload the two models and the curated dataset to the Hub
  humpback launch [ACCELERATE ARGS] SCRIPT [ARGS]   `accelerate launch` a stage (dvc.yaml's commands)
"""

from __future__ import annotations

import argparse
import sys

from .stage import run


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="humpback", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    plots = sub.add_parser("plots", help="`dvc plots show|diff` as a page that renders offline",
                           description="Runs `dvc plots ACTION [DVC ARGS] --html-template <offline template>`. "
                                       "`template` prints that template's path (for `dvc config --local "
                                       "plots.html_template PATH`).")
    plots.add_argument("action", choices=["show", "diff", "template"])
    plots.add_argument("dvc_args", nargs=argparse.REMAINDER, help="passed to `dvc plots ACTION` (e.g. -o DIR, --open, revisions)")

    pub = sub.add_parser("publish", help="upload models/backward, models/final and the curated dataset to the Hub",
                         description="Model and dataset cards are built from params.yaml, metrics/, dvc.lock and git. "
                                     "The token comes from HF_TOKEN.")
    pub.add_argument("--namespace", help="Hub user or organization: NS/humpback-backward, NS/humpback-final, "
                                         "NS/humpback-curated")
    pub.add_argument("--backward-repo", help="model repo id for models/backward (overrides --namespace)")
    pub.add_argument("--final-repo", help="model repo id for models/final (overrides --namespace)")
    pub.add_argument("--dataset-repo", help="dataset repo id for the curated data (overrides --namespace)")
    pub.add_argument("--only", nargs="+", choices=["backward", "final", "curated"], help="publish only these")
    pub.add_argument("--base-model", help="Hub id for the cards' base_model, when model.base is not a Hub id "
                                          "(e.g. the default GGUF of SmolLM2-135M-Instruct)")
    pub.add_argument("--private", action="store_true", help="create the repos as private")
    pub.add_argument("--dry-run", action="store_true", help="write the cards and file lists to --out; upload nothing")
    pub.add_argument("--out", default="publish", help="folder for --dry-run (default: publish/)")
    pub.add_argument("--project", default=".", help="the project directory (default: .)")
    return p


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["launch"]:  # all of accelerate's own arguments, parsed by accelerate
        from . import launch

        sys.exit(launch.main(argv[1:]))
    args = parser().parse_args(argv)
    if args.command == "plots":
        from .results import plots

        run(lambda: sys.exit(plots.main(args.action, args.dvc_args)), timed=False)  # dvc's own exit code
    else:
        from .results import publish

        run(lambda: publish.main(args), timed=False)


if __name__ == "__main__":
    main()
