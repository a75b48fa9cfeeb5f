#!/usr/bin/env python3
"""Sediment's entry point: ``python run_service.py [COMMAND] --help``."""

import sys

from reporting.cli import main

if __name__ == "__main__":
    sys.exit(main())
