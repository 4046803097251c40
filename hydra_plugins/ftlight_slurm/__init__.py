"""ftlight's Hydra launcher for SLURM (``hydra/launcher=slurm``): ``_launcher.SlurmLauncher``.

The module's name starts with ``_`` so that Hydra's plugin scan, which executes every module it
finds again (new classes in place of those already imported), leaves it alone; ``ftlight-train``
imports and registers the launcher itself, which also covers editable installs, where the scan
does not see this package.
"""
