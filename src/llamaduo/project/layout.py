"""The files of a llamaduo project that `llamaduo init` carries from this repository, declared once.

This repository is itself a working project of that shape, so these paths ARE the templates: the build
(setup.py) copies them into the wheel at `llamaduo/project/template/`, and an editable install reads them from
the checkout. No second copy is kept in git. This module imports nothing, so setup.py can read it before the
package is installed.
"""

# paths relative to the repository root; a folder is carried whole (its files, recursively)
CARRIED = (
    "dvc.yaml",
    "params.yaml",
    ".gitignore",
    ".dvcignore",
    "stages",
    "prompts",
    "tests/test_data.py",  # the smoke test of the user's own data and params
)

# where the build puts them, relative to the `llamaduo` package
PACKAGED = "project/template"

# never carried from a carried folder (bytecode a run left beside the sources)
SKIPPED_PARTS = ("__pycache__",)
SKIPPED_SUFFIXES = (".pyc",)
