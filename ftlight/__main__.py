"""``python -m ftlight``: ``ftlight-train`` (the same command line), where the console script
is not on ``PATH`` (a job script naming its interpreter, a test)."""

from ftlight.cli.entry import train

train()
