"""`python -m ldreg` is the `ldreg` command."""

from ldreg.cli import main

main()
