"""``python -m icl.train``: the training entry point (the code lives in ``icl.run.train``)."""

if __name__ == "__main__":
    from icl.run.train import cli

    cli()
