"""Evaluation: held-out exact-match accuracy by greedy decoding."""
