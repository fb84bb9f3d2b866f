"""``python -m icl.study``: the seed study's report entry point (the code lives in ``icl.lab.study``)."""

if __name__ == "__main__":
    from icl.lab.study.report import cli

    cli()
