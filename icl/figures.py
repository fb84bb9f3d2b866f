"""``python -m icl.figures``: the figures entry point (the code lives in ``icl.analysis.figures``)."""

if __name__ == "__main__":
    from icl.analysis.figures import cli

    cli()
