"""Speed: the host allocator, the attention kernel, low-precision frozen weights, MFU and the
throughput callback. Nothing here changes what a run computes, only how fast."""
