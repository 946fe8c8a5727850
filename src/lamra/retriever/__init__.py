"""LamRA-Ret: the embedding model, its pooling and loss, and its training data, collator, steps and trainer."""
