"""Retrieval benchmarks that drive the real ``newsdesk`` CLI and score its runs with an independent evaluator."""
