"""Print the [project] dependencies of a pyproject.toml, one per line (for `pip install -r`).

The Dockerfile installs them in a layer of their own, before the source is copied, so a code
change does not reinstall them.
"""

import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

with open(sys.argv[1], "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["dependencies"]))
