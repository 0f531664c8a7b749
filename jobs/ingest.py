"""Entry point for `ray job submit -- python jobs/ingest.py [flags]`: same flags as `cryptopredict ingest`."""

import sys

from cryptopredict.cli import main

if __name__ == "__main__":
    sys.exit(main(["ingest", *sys.argv[1:]]))
