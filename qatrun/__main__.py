"""``python -m qatrun`` runs the command-line tool."""

from qatrun.cli import main

raise SystemExit(main())
