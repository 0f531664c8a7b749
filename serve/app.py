"""The Ray Serve application of cryptopredict: entry point for ``serve run serve.app:build_app`` (from the
repository root) and home of ``serve/config.yaml``.

The deployments themselves live in the package, ``cryptopredict/serving/app.py`` (one deployment per base
model, the model board, the FastAPI ingress; see its docstring for routes, reload and errors): a Serve
config deployed with ``serve deploy`` is imported on the cluster's nodes, where the package is installed
and this directory is not.

    serve run serve/config.yaml                       # local Ray, blocks until Ctrl-C
    serve run serve.app:build_app config=configs/default.yaml
    serve deploy serve/config.yaml                    # onto a running cluster
    cryptopredict serve --model-dir runs/<run id>/models/ensemble

Before serving: a lake with features (`cryptopredict run`), and a model: ``serving.model_dir`` (or
``--model-dir``) or a registry champion. Data older than ``serving.max_data_age_hours`` is refused with 503;
to replay the shipped data, set ``serving.fixed_now`` to a time just after its last bar.
"""

from cryptopredict.serving.app import Ingress, BaseModelDeployment, build_app

__all__ = ["BaseModelDeployment", "Ingress", "build_app"]
