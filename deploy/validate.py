"""Validate the KubeRay manifests against the vendored CRDs (deploy/crds), offline.

    python -m deploy.validate                   # deploy/rayservice.yaml, rayjob-backfill.yaml
    python -m deploy.validate build/k8s/*.yaml  # manifests rendered elsewhere

Exit 1 when a manifest would be refused: by the API server (deploy/schema.py says what is
checked) or by the KubeRay operator (deploy/operator_rules.py), or when it sets a field guarded
by a CEL rule, which this cannot evaluate. No cluster is contacted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from deploy.operator_rules import operator_rules
from deploy.schema import Crd, Problem, Report, load_crd, load_manifests, validate

logger = logging.getLogger("deploy.validate")

DEPLOY = Path(__file__).resolve().parent
CRD_FILES = {
    "RayService": DEPLOY / "crds" / "ray.io_rayservices.yaml",
    "RayJob": DEPLOY / "crds" / "ray.io_rayjobs.yaml",
}
MANIFESTS = (DEPLOY / "rayservice.yaml", DEPLOY / "rayjob-backfill.yaml")


def crd_for(kind: object) -> Crd | None:
    path = CRD_FILES.get(kind) if isinstance(kind, str) else None
    return load_crd(path) if path else None


def validate_document(doc: object) -> Report:
    """One manifest document; a kind without a vendored CRD is an error, not a pass."""
    kind = doc.get("kind") if isinstance(doc, dict) else None
    crd = crd_for(kind)
    if crd is None:
        known = ", ".join(sorted(CRD_FILES))
        return Report(errors=[Problem("kind", f"{kind!r} has no vendored CRD (known: {known})")])
    report = validate(doc, crd)
    if report.ok and isinstance(doc, dict):  # the operator only sees what the server admitted
        report.errors += operator_rules(doc)
    return report


def validate_file(path: Path) -> list[Report]:
    return [validate_document(doc) for doc in load_manifests(path.read_text(encoding="utf-8"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.validate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("paths", nargs="*", type=Path, default=list(MANIFESTS))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    failed = False
    for path in args.paths:
        for i, report in enumerate(validate_file(path)):
            for problem in report.errors:
                logger.error("%s[%d] %s", path, i, problem)
            for problem in report.unchecked:
                logger.error("%s[%d] %s (set a field without CEL rules, or check it in a "
                             "cluster)", path, i, problem)  # fmt: skip
            failed = failed or bool(report.errors or report.unchecked)
            if not (report.errors or report.unchecked):
                logger.info("%s[%d]: valid", path, i)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
