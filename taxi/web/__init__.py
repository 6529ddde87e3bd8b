"""The operator page (docs/web.md): the trained months, a form that starts a run through luigid, each run's tasks
live and each task's log, behind a password. `python -m taxi.web` serves it; `taxi.web.app.create_app` builds it.

The web process reads the store, MLflow and luigid's JSON API; it never imports the pipeline (taxi.pipeline,
xgboost, hyperopt): the form is checked by `python -m taxi.web.plan` and runs are `luigi` processes.
"""
