"""backdoorlab: backdoor attacks and defenses on image classifiers, as a DVC pipeline.

The library: data sources (sources), the data set file (dataset), attacks and defenses (each one module behind a
registry), models, the one training loop (training), metric definitions (metrics) and
their application (evaluation), and the report. The DVC stages live in `stages/`.
"""
