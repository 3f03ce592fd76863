#!/usr/bin/env python3
"""Prune before training, train, test: ``python run.py --model resnet20 --ratio 0.95``."""

import sys

from jpanning.cli import main

if __name__ == "__main__":
    sys.exit(main())
