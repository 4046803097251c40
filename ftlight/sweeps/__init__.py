"""Sweeps: runs read back from their folders and compared (``ftlight-compare`` and the Hydra
callback that writes a sweep's comparison after each trial). Nothing here trains."""
