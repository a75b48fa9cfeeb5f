#!/usr/bin/env python3
"""Sediment's entry point: ``python run_service.py [COMMAND] --help``.

The same command line is installed as ``sediment``.
"""

import sys

from sediment.cli import main

if __name__ == "__main__":
    sys.exit(main())
