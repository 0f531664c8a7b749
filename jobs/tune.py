"""Entry point for `ray job submit -- python jobs/tune.py [flags]`: same flags as `cryptopredict tune`."""

import sys

from cryptopredict.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
