"""``python -m pyworker.client``: send one request the way a Vast client does.

See :mod:`pyworker.devtools.client`.
"""

from __future__ import annotations

import sys

from .devtools.client import main

if __name__ == "__main__":
    sys.exit(main())
