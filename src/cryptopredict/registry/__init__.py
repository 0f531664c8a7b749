"""Versioned model registry (local directory or s3:// through pyarrow.fs).

settings.py    RegistryConfig (+ RetrainConfig: the retrain job's window and promotion rule)
store.py       file operations on a local root or an s3 prefix (atomic single-file writes, lock)
manifest.py    Version / Registration, errors, checksums, git revision
champion.py    the champion pointer: lineage (promote pushes, rollback pops) and history
registry.py    ModelRegistry: register, list_versions, get, champion, promote, rollback, verify, fetch
from_run.py    an evaluation run's final fit → register (metrics from RunResult/ModelResult)
challenge.py   the stored champion scored on the challenger's window; the promotion rule (log loss, DM)
reload.py      POST /admin/reload to the Serve app
retrain.py     the retrain job

Nothing is imported here: ``config.py`` imports ``registry.settings`` and the other modules import the
config, so this package must stay import-light.
"""
