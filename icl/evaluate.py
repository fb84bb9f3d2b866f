"""``python -m icl.evaluate``: the evaluation entry point (the code lives in ``icl.run.evaluate``)."""

if __name__ == "__main__":
    from icl.run.evaluate import cli

    cli()
