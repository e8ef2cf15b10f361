"""`python -m mnistexp` is the `mnistexp` command."""

from mnistexp.cli.main import mnistexp

mnistexp()
