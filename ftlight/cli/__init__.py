"""The console commands: ftlight-train's entry shim, ftlight-eval, ftlight-generate,
ftlight-strategies, ftlight-compare. Each parses its arguments and calls the library."""
