"""Packaging for deo_kit: metadata and dependencies come from settings.ini (nbdev 2 layout).

The top-level `kernels/` folder ships as the subpackage `deo_kit.kernels`; a wheel never carries a
top-level `kernels` package (that name belongs to another project on PyPI).
"""
import shlex
from configparser import ConfigParser
from pathlib import Path

import setuptools

here = Path(__file__).resolve().parent
parser = ConfigParser(delimiters=["="])
parser.read(here / "settings.ini", encoding="utf-8")
cfg = parser["DEFAULT"]


def reqs(key):
    "Requirements listed under `key` in settings.ini (shell-quoted so markers stay whole)."
    return shlex.split(cfg.get(key, ""))


extras = {name: reqs(f"{name}_requirements") for name in ("kernels", "viz", "sweep")}
extras["dev"] = sorted({r for rs in extras.values() for r in rs} | set(reqs("dev_requirements")))

licenses = {"apache2": ("Apache Software License 2.0", "OSI Approved :: Apache Software License")}
lic = licenses[cfg["license"]]
statuses = ["1 - Planning", "2 - Pre-Alpha", "3 - Alpha", "4 - Beta", "5 - Production/Stable"]
min_python = cfg["min_python"]

setuptools.setup(
    name=cfg["lib_name"],
    version=cfg["version"],
    description=cfg["description"],
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    author=cfg["author"],
    author_email=cfg["author_email"],
    license=lic[0],
    url=cfg["git_url"],
    keywords=cfg["keywords"].split(),
    classifiers=[
        f"Development Status :: {statuses[int(cfg['status']) - 1]}",
        f"Intended Audience :: {cfg['audience']}",
        f"License :: {lic[1]}",
        "Natural Language :: English",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: GIS",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
    python_requires=f">={min_python}",
    packages=setuptools.find_packages(include=["deo_kit", "deo_kit.*"]) + ["deo_kit.kernels"],
    package_dir={"deo_kit.kernels": "kernels"},
    package_data={"deo_kit": ["configs/*.yaml", "assets/*", "assets/**/*", "sweeps/*"]},
    include_package_data=True,
    install_requires=reqs("requirements"),
    extras_require=extras,
    entry_points={
        "console_scripts": cfg.get("console_scripts", "").split(),
        "nbdev": [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"],
    },
    zip_safe=False,
)
