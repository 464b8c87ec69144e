"""``python -m csc`` runs the command line."""

from csc.cli import main

main()
