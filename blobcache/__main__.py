"""``python -m blobcache``: the same as the ``blobcache`` command."""

from .cli import main

raise SystemExit(main())
