"""`python3 -m debcache`: the same as the `debcache` command."""

from .cli import main

main()
