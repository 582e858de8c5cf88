"""The build step pyproject.toml cannot declare: copy the example project's files (dvc.yaml, params.yaml, stages/,
prompts/, ...) into the wheel as `llamaduo/project/template/`, for `llamaduo init`.

They live at the repository root because this repository is itself a project of that shape; setuptools'
package data only reaches files inside the package, and a second copy there would drift. The list is
src/llamaduo/project/layout.py (read by path: the package is not installed while it builds). An editable install
(`pip install -e .`) skips the copy: llamaduo.project reads the files from the checkout.
"""

import runpy
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.egg_info import egg_info

ROOT = Path(__file__).resolve().parent
LAYOUT = runpy.run_path(str(ROOT / "src" / "llamaduo" / "project" / "layout.py"))


def carried_files(root: Path) -> list[Path]:
    out = []
    for name in LAYOUT["CARRIED"]:
        path = root / name
        if not path.exists():
            raise FileNotFoundError(f"{name} (listed in src/llamaduo/project/layout.py) is missing from {root}")
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        out += [f for f in files if not set(LAYOUT["SKIPPED_PARTS"]) & set(f.parts)
                and not f.name.endswith(LAYOUT["SKIPPED_SUFFIXES"])]
    return out


class BuildWithTemplates(build_py):
    def run(self):
        super().run()
        if self.editable_mode:
            return
        dest = Path(self.build_lib) / "llamaduo" / LAYOUT["PACKAGED"]
        shutil.rmtree(dest, ignore_errors=True)  # an in-tree build/ may hold files since removed here
        for f in carried_files(ROOT):
            target = dest / f.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, target)


class EggInfoWithTemplates(egg_info):
    """An sdist (`python -m build` makes the wheel from it) must hold the carried files too, or its build fails."""

    def find_sources(self):
        super().find_sources()
        self.filelist.extend(str(f.relative_to(ROOT)) for f in carried_files(ROOT))


setup(cmdclass={"build_py": BuildWithTemplates, "egg_info": EggInfoWithTemplates})
