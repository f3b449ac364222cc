"""Only what pyproject.toml cannot say: the search spaces ship in the wheel as the data-only package
`automerge.spaces` while their files stay in search_spaces/ at the checkout's root (pyproject's
`packages.find` cannot add a package mapped onto another directory). Everything else: pyproject.toml."""

from setuptools import find_namespace_packages, setup

setup(
    packages=[*find_namespace_packages(include=["automerge", "automerge.*"]), "automerge.spaces"],
    package_dir={"automerge.spaces": "search_spaces"},
)
