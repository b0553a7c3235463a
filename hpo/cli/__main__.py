"""``python -m hpo.cli``: the ``hpo`` command."""
from hpo.cli import main

main(prog_name="hpo")
