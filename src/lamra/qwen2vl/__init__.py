"""The Qwen2-VL machinery both sides share: backbone loading, processor, prompts, images, video,
vision attention and batching. Nothing here knows retrieval from reranking."""
