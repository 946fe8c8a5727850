"""LamRA-Rank: the reranking model (pointwise and listwise), its shared-prefix forward, scores and
positions, and its training data, collator, steps, trainer and hard-negative mining."""
