"""The lab: protocols and reports that use the library (``icl``, ``icl.run``, ``icl.analysis``) to answer questions
(the tuning protocol, the seed study). The library never imports it (``tests/test_layers.py``)."""
