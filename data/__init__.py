"""Data: text sources (local .txt/.jsonl or HF datasets), tokenizers, a token cache, packed resumable batches."""
