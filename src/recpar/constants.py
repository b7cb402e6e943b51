"""Constants shared by the data, model, evaluation and parallel code; each has this one home."""

PAD_ITEM = 0
"""Item id 0 is padding (sequences are left-padded); real items are 1..n_items."""

IGNORE_INDEX = -100
"""Target value that the cross-entropy skips: F.cross_entropy's default ignore_index."""
