"""``python -m lambda_blocks.profiling``: the profile CLI (``lambda_blocks.profiling.cli``)."""
import sys

from .cli import main

sys.exit(main())
