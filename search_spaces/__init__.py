"""The search spaces, shipped in the wheel as the data-only package `automerge.spaces` (setup.py maps
it onto this directory), so `automerge search` finds demo.yaml outside a checkout too."""
