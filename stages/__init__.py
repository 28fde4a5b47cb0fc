"""One module per DVC stage: read its params, call the library (backdoorlab), write its outputs.

Run any of them with `python -m stages.<name> --help` from the folder holding dvc.yaml.
"""
