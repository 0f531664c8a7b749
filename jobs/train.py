"""Entry point for `ray job submit -- python jobs/train.py [flags]`: walk-forward evaluation of the
configured models on the lake's features, then the final fits, registered in the model registry
(`cryptopredict evaluate`). Run `jobs/ingest.py` and `jobs/features.py` first, or `jobs/pipeline.py` for all
three."""

import sys

from cryptopredict.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", "--register", *sys.argv[1:]]))
