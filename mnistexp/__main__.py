"""`python -m mnistexp` is the `mnistexp` command."""

from mnistexp.cli import main

main()
