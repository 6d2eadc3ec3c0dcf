"""The code location that `dagster dev` loads (see workspace.yaml).

``BIDS_HUB_SPECS`` names a spec file or a folder of them; without it, the demo dataset
(built on first load from the images nibabel ships) is shown.
"""

from __future__ import annotations

import os

from .defs import build_definitions
from .demo import ensure_demo_spec
from .spec import load_specs


def load_definitions():
    specs_path = os.environ.get("BIDS_HUB_SPECS")
    specs = load_specs(specs_path) if specs_path else [ensure_demo_spec()]
    return build_definitions(specs)


defs = load_definitions()
