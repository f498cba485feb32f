"""``python -m pyworker.autoscaler``: run the local stand-in for Vast's autoscaler and router.

See :mod:`pyworker.devtools.autoscaler`.
"""

from __future__ import annotations

import sys

from .devtools.autoscaler import main

if __name__ == "__main__":
    sys.exit(main())
