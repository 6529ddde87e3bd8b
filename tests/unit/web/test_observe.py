"""taxi/web/observe.py, its pure parts: which task ids the page accepts, a task's family and title, and the order
of a dependency graph."""

from __future__ import annotations

import luigi.task
import pytest

from taxi.web import observe


def test_luigi_s_own_task_ids_are_valid_and_their_family_is_read_back():
    for family, params in (("TrainModel", {"color": "green", "year": "2021", "month": "1"}),
                           ("RangeMonthly", {"of": "RegisterMonth", "of_params": '{"color": "green"}',
                                             "start": "2021-03", "stop": "2021-07"}),
                           ("Noted", {"name": "../../etc/passwd"})):
        task_id = luigi.task.task_id_str(family, params)
        assert observe.valid_task_id(task_id) and observe.family(task_id) == family, task_id


@pytest.mark.parametrize("task_id", ["", ".._x", "x.._y", "TrainModel_..", "a/b_c", "a\\b_c", "Train%2FModel_x",
                                     "TrainModel", "_x", "(x)_y", "TrainModel_x y"])
def test_anything_else_is_not(task_id):
    assert not observe.valid_task_id(task_id)


def test_a_title_is_the_task_as_luigi_prints_it():
    task = {"name": "CleanMonth", "params": {"color": "green", "year": "2021", "month": "1"}}
    assert observe.title(task) == "CleanMonth(color=green, year=2021, month=1)"


def test_a_graph_lists_each_task_after_everything_it_depends_on_once():
    graph = {"root": {"deps": ["train", "clean-feb"]}, "train": {"deps": ["features"]},
             "features": {"deps": ["clean-jan", "clean-feb"]}, "clean-jan": {"deps": ["download-jan"]},
             "clean-feb": {"deps": ["download-feb", "forgotten"]}, "download-jan": {}, "download-feb": {}}
    order = observe._dependencies_first(graph, "root")
    assert sorted(order) == sorted(graph) and order[-1] == "root"
    for task, found in graph.items():
        for dep in found.get("deps", []):
            if dep in graph:
                assert order.index(dep) < order.index(task), (dep, task)
    assert observe._dependencies_first(graph, "not-there") == []
