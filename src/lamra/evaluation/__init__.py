"""Evaluation: metrics, M-BEIR (local / global pools) and zero-shot sets, with embedding caches.

- :mod:`.metrics` - Recall@K (M-BEIR hit rate), CIRCO MAP@K, R@1, ITM accuracy.
- :mod:`.mbeir` - ``evaluate_mbeir``: the 16-task table of the paper, TREC runs, cached embeddings.
- :mod:`.zeroshot` - ``evaluate_zeroshot`` over a plain queries / candidates / qrels folder.
- :mod:`.baselines` - random (chance level) and oracle (ceiling) encoders.
"""
