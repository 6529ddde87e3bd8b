"""taxi/layout.py: every target's path relative to the store, from its one template."""

from __future__ import annotations

import re

from taxi import layout

KEY = "v2-0123456789"


def test_each_target_s_path_is_its_template_filled_in():
    assert layout.raw("green", 2021, 1) == {"data": "raw/green/green_tripdata_2021-01.parquet",
                                            "meta": "raw/green/green_tripdata_2021-01.parquet.json"}
    assert layout.clean("yellow", 2023, 2, KEY) == {"data": f"clean/{KEY}/yellow/2023-02.parquet",
                                                    "stats": f"clean/{KEY}/yellow/2023-02.json"}
    assert layout.features("green", 2021, 1, KEY) == {name: f"features/{KEY}/green/2021-01/{name}.{ext}" for name, ext
                                                      in (("vectorizer", "pkl"), ("train", "npz"), ("valid", "npz"))}
    assert layout.tuning("green", 2021, 1, "abc") == "tuning/green/2021-01/abc/best_params.json"
    assert layout.scores("green", 2021, 2, 3) == {"predictions.parquet": "scores/green/2021-02/v3/predictions.parquet",
                                                  "live.json": "scores/green/2021-02/v3/live.json"}
    assert layout.task_log("TrainModel", "TrainModel_green_1_2021_7449fdcbb1", "a1") == {
        "log": "logs/TrainModel/TrainModel_green_1_2021_7449fdcbb1/a1.log",
        "record": "logs/TrainModel/TrainModel_green_1_2021_7449fdcbb1/a1.json"}


def test_a_run_folder_holds_every_run_file_and_its_month_is_read_back():
    run = layout.run("green", 2021, 3, KEY)
    assert set(run) == set(layout.RUN_FILES) and set(layout.REPORT_FILES) <= set(layout.RUN_FILES)
    assert {path.rsplit("/", 1)[0] for path in run.values()} == {f"runs/green/2021-03/{KEY}"}
    assert {layout.run_month(path) for path in run.values()} == {"2021-03"}


def test_the_templates_are_every_path_written_each_once_and_inside_the_store():
    made = [*layout.raw("green", 2021, 1).values(), *layout.clean("green", 2021, 1, KEY).values(),
            *layout.features("green", 2021, 1, KEY).values(), layout.tuning("green", 2021, 1, KEY),
            *layout.run("green", 2021, 1, KEY).values(), *layout.scores("green", 2021, 1, 1).values(),
            *layout.task_log("TrainModel", "TrainModel_x", "a1").values(), layout.REGISTRY_RECORD]
    templates = layout.templates()
    assert len(set(templates)) == len(templates) == len(made)
    as_patterns = [re.compile(re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(t))) for t in templates]
    for path in made:
        assert sum(bool(p.fullmatch(path)) for p in as_patterns) == 1, path
    for template in templates:
        assert not template.startswith("/") and ".." not in template.split("/"), template
