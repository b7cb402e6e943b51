"""The data stage: sources -> dedup -> k-core -> id remap -> chronological split -> files.

Submodules (imported lazily by the user; this package imports nothing heavy):

- `sources`      registry of raw-data sources (Amazon 2014 download, MovieLens-100k, synthetic)
- `download`     resumable, verified HTTP download
- `filtering`    duplicate removal and iterative k-core filter
- `id_map`       raw id -> dense id remapping
- `split`        global chronological train/valid/test split
- `stats`        Table I statistics
- `prepare`      the whole pipeline, writing the files of `prepared.py` atomically
- `text_embed`   cached item text embeddings from a pretrained sentence encoder
- `table1`       markdown rendering of Table I beside the paper's values
"""
