"""Llama data preparation: Alpaca -> conversation JSON -> tokenized Parquet.

Mirrors `mindformers/tools/dataset_preprocess/llama/`.
"""
