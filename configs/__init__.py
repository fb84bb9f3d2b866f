"""The shipped Hydra configs, installed as package data ``icl.configs`` (see pyproject.toml's package-dir)."""
