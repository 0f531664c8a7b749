"""Entry point for `ray job submit -- python jobs/pipeline.py [flags]`: the main job (`cryptopredict run`)."""

import sys

from cryptopredict.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
