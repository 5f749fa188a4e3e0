# ruff: noqa  (an experiment harness: sizes costs on the warm path by switching parts off)
"""Experiment launcher: debcache serve with parts switched off, to size each cost (not a fix)."""

import logging
import os
import sys

variant = os.environ.get("VARIANT", "")
if "uvloop" in variant:
    import uvloop

    uvloop.install()
from debcache import cli

if "noaccess" in variant:
    original = logging.basicConfig

    def basic(**kw):
        original(**kw)
        logging.getLogger("debcache.access").setLevel(logging.WARNING)

    logging.basicConfig = basic
if "nofetchlog" in variant:
    from debcache import recording

    recording.FetchLog.finish = lambda self, record: None
sys.argv = ["debcache", *sys.argv[1:]]
cli.main()
