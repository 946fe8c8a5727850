"""Evaluation: metrics, M-BEIR (local / global pools) and zero-shot sets, with embedding caches.

- :mod:`.metrics` - Recall@K (M-BEIR hit rate), CIRCO MAP@K, R@1, ITM accuracy.
- :mod:`.mbeir` - ``evaluate_mbeir``: the 16-task table of the paper, TREC runs, cached embeddings.
- :mod:`.zeroshot` - ``evaluate_zeroshot`` over a plain queries / candidates / qrels folder.
- :mod:`.baselines` - random (chance level) and oracle (ceiling) encoders.
"""

# Candidates retrieved per query and written to an M-BEIR run (the paper's top 50; Recall@50 is
# reported). Its home is here, not in .mbeir, so `lamra eval` reads it without loading numpy.
RETRIEVAL_TOP_K = 50
