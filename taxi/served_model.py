"""The served model as MLflow "models from code": loading a registered version runs this file, which names the pyfunc
(training.log_model logs it with the taxi package as code)."""

from mlflow.models import set_model

from taxi.training import TripDurationModel

set_model(TripDurationModel())
