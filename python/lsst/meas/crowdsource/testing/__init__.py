"""Test support: simulated fields, scoring, figures, fake-instrument butler records.

Not imported by `lsst.meas.crowdsource`; import the modules directly, as
with ``lsst.meas.base.tests`` or ``photutils.datasets``:

- `.simulate`: crowded fields with known truth (`simulate_field`);
- `.evaluation`: matching to the truth, robust statistics, Cramér-Rao bounds;
- `.plotting`: the demo's and benchmarks' figures (needs the ``plot`` extra);
- `.butler`: the dimension records an obs package would register.
"""
