"""``sae-sens label``: humans take the judge's blind pairwise test on a local page.

    pairs = label_pairs(store, run, sae)               # the judge's pairs for the same seed
    server = make_server(LabelBook(store, pairs, 42), rater="ana")   # 127.0.0.1, a free port
    server.serve_forever()

Answers go to the ``labels`` table, one row per rater and pair, as they are given; a rater can undo
their last one.
"""

from .pairs import PAIR_COLUMNS, Pair, build_pairs, pairs_table
from .server import ANSWERS, LOOPBACK, LabelBook, is_loopback, make_server
from .store import label_pairs

__all__ = ["ANSWERS", "LOOPBACK", "PAIR_COLUMNS", "LabelBook", "Pair", "build_pairs", "is_loopback", "label_pairs",
           "make_server", "pairs_table"]
