"""The served model as MLflow "models from code": loading a registered version runs this file, which names the pyfunc
(training.log_model logs it with taxi's serving modules as its code)."""

from mlflow.models import set_model

from taxi.serving import TripDurationModel

set_model(TripDurationModel())
