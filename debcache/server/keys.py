"""Typed keys of what the app holds, shared by the handlers."""

from aiohttp import web

from ..cache import LiveCache, StoreHits
from ..config import Config
from ..db import Database
from ..integrity import CheckedBlobs
from ..metrics import Metrics
from ..pinned import PinnedFiles
from ..recording import FetchLog
from ..upstream import UpstreamClient
from .machine_names import MachineNames
from .relay import FetcherRelay

CONFIG = web.AppKey("config", Config)
CACHE = web.AppKey("cache", LiveCache | StoreHits)
FETCH_LOG = web.AppKey("fetch_log", FetchLog)
PINNED = web.AppKey("pinned", PinnedFiles)
METRICS = web.AppKey("metrics", Metrics)
DATABASE = web.AppKey("database", Database)
MACHINE_NAMES = web.AppKey("machine_names", MachineNames)
UPSTREAM = web.AppKey("upstream", UpstreamClient)
BLOBS = web.AppKey("blobs", CheckedBlobs)
RELAY = web.AppKey("relay", FetcherRelay)  # worker processes only
