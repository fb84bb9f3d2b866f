"""``python -m icl.study``: the seed study's report entry point (the code lives in ``icl.analysis.study``)."""

if __name__ == "__main__":
    from icl.analysis.study import cli

    cli()
