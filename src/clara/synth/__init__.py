"""Stage-1 (SCP) training data from a corpus, written by a teacher LLM and checked by it.

- :mod:`.prompts`: every instruction sent to the teacher, overridable from a file;
- :mod:`.parse`: tolerant parsing of teacher replies (pure functions);
- :mod:`.teacher`: OpenAI-compatible client (concurrency, retries) and a local batching teacher;
- :mod:`.pipeline`: generate -> verify -> coverage rounds -> resumable JSONL;
- :mod:`.teacher_server`: a small OpenAI-compatible endpoint over a transformers model.
"""
