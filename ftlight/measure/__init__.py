"""Measurement: what the hardware can do (``hardware``), the FLOPs a step needs (``mfu``) and
the run's throughput callback (``throughput``). Nothing here changes what a run computes."""
