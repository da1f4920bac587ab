"""``python -m daemon`` is the same as the ``driftd`` console script."""

import sys

from daemon.cli.main import main

sys.exit(main())
