"""Readers and writers of the data lamra works on (jsonl items, M-BEIR, user collections)."""
