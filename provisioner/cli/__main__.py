"""``python -m provisioner.cli``: the same as the ``provisioner`` command."""

from __future__ import annotations

import sys

from provisioner.cli.app import main

sys.exit(main())
