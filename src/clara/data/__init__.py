"""Readers for corpora, QA datasets and training rows."""

from .corpus import Document, read_corpus
from .qa import QAExample

__all__ = ["Document", "QAExample", "read_corpus"]
