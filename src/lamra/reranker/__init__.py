"""LamRA-Rank: the reranking model (pointwise and listwise), its shared-prefix forward, scores and
positions, and its training data, collator, steps and hard-negative mining."""
