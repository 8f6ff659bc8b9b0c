# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""Every command line of magnet_hf, apart from the library it drives (as transformers' `commands/`).

Each module declares its flags once, as dataclass fields (`arguments`), and has a `main(argv) -> exit status`
(`magnet_hf.exit_status`); `scripts/*.py` and the `magnet-hf` console entry point only call these `main`s.

- `magnet_hf_cli`: `magnet-hf` and its subcommands (segment, demo, convert, evaluate, prepare-data).
- `segment`, `demo`: `magnet-hf segment` and `magnet-hf demo`.
- `convert`, `evaluate`, `prepare_data`, `push_to_hub`, `train`, `ablate`, `benchmark`, `demo_model`: the
  commands behind `scripts/`.
"""
