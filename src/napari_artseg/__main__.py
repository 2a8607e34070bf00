"""``python -m napari_artseg`` runs the ``artseg`` command line."""

import sys

from .cli import main

sys.exit(main())
