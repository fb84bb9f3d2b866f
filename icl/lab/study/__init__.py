"""The seed study v2: compact per-cell results (``compact``), inference rules (``inference``), claims
(``claims``, ``timing``), figures and the report from a template (``report``, ``report.md``), and the driver
that trains only the cells whose committed results do not match their config (``make``)."""
