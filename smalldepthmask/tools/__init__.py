"""Dataset tools: `stats`, `split`, `preview`, `verify` (each `main(argv) -> int`, run by the command group).

All of them read a generator output directory (shards + manifest.json) through `tools.dataset`, streaming
sample by sample so that memory stays flat however large the dataset.
"""
