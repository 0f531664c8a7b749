"""Entry point for `ray job submit -- python jobs/retrain.py [flags]`: same flags as `cryptopredict retrain`
(ingest, features, challenger on the latest window vs the champion, register, promote by the rule)."""

import sys

from cryptopredict.cli import main

if __name__ == "__main__":
    sys.exit(main(["retrain", *sys.argv[1:]]))
