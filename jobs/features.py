"""Entry point for `ray job submit -- python jobs/features.py [flags]`: same flags as `cryptopredict features`."""

import sys

from cryptopredict.cli import main

if __name__ == "__main__":
    sys.exit(main(["features", *sys.argv[1:]]))
