"""``pconv app``: a local web page to try a model on your own photo, and a plain HTTP endpoint.

Needs the ``app`` extra (FastAPI, uvicorn, python-multipart)::

    from pconv_deploy.app import AppOptions, start_app
    running = start_app(AppOptions(models=(Path("model.onnx"),), port=0))
    print(running.url); ...; running.stop()
"""

from pconv_deploy.app.models import AppOptions
from pconv_deploy.app.server import create_app, run_app, start_app

__all__ = ["AppOptions", "create_app", "run_app", "start_app"]
