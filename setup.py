"""trm: Tiny Recursive Models for research at scale (PyTorch, PyTorch/XLA, gin).

The project's metadata (name, version, dependencies, extras, console scripts, packages) lives in
pyproject.toml. This file holds only what pyproject.toml cannot express: the build step that
ships the gin/ experiment tree inside the package.
"""

import pathlib
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = pathlib.Path(__file__).parent


class BuildPyWithGin(build_py):
    """Ships the experiment tree: copies gin/**/*.gin into the built package as
    ``trm/gin_configs/`` (gin/ itself stays a plain folder of .gin files, without any
    ``__init__.py``), so `--gin_file=e2_3_mlp.gin` resolves after a non-editable install.
    Editable installs read the repository's gin/ directly."""

    def run(self):
        super().run()
        src = ROOT / "gin"
        dst = pathlib.Path(self.build_lib) / "trm" / "gin_configs"
        for path in sorted(src.rglob("*.gin")):
            target = dst / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


setup(cmdclass={"build_py": BuildPyWithGin})
