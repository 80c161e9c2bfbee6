"""Data set preprocessing scripts, one folder per model family (as `mindformers/tools/dataset_preprocess/`)."""
