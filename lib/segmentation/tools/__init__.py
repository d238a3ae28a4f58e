"""Development tools, apart from the product's stages: `generate` (synthetic logs with planted
segments, for tests, the demo and the benchmark) and `bench` (the benchmark). No stage imports them."""
