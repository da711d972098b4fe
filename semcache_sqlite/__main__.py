"""``python -m semcache_sqlite`` is the ``semcache`` command."""

from .cli import main

if __name__ == "__main__":
    main()
