"""The dict-free feature matrices equal DictVectorizer's on the course's records, entry for entry."""

import io

import luigi.configuration
import numpy as np
import pandas as pd

from bench.course import course_features
from taxi import data, features


def cleaned(tlc_dir, month):
    return data.clean_trips(data.read_trips(tlc_dir / f"green_tripdata_{month}.parquet", "green"), "green")[0]


def assert_same_csr(a, b):
    assert a.shape == b.shape
    assert (a != b).nnz == 0
    a, b = a.tocsr(), b.tocsr()
    np.testing.assert_array_equal(a.indptr, b.indptr)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.data, b.data)


def test_matrices_equal_dictvectorizer_on_real_months(tlc_dir):
    train, valid = cleaned(tlc_dir, "2021-01"), cleaned(tlc_dir, "2021-02")
    course_dv, course_train, course_valid = course_features(train, valid)
    vectorizer = features.fit_vectorizer(train)
    assert vectorizer.feature_names_ == course_dv.feature_names_
    assert vectorizer.vocabulary_ == course_dv.vocabulary_
    assert_same_csr(features.transform(vectorizer, train), course_train)
    assert_same_csr(features.transform(vectorizer, valid), course_valid)
    # the saved vectorizer is a working DictVectorizer too
    assert_same_csr(vectorizer.transform(valid[["PU_DO", "trip_distance"]].to_dict("records")), course_valid)


def test_unseen_pairs_keep_only_the_distance():
    train = pd.DataFrame({"PU_DO": ["1_2", "10_2"], "trip_distance": [1.0, 0.0]})
    valid = pd.DataFrame({"PU_DO": ["1_2", "3_4"], "trip_distance": [2.5, 4.0]})
    vectorizer = features.fit_vectorizer(train)
    X = features.transform(vectorizer, valid)
    assert vectorizer.feature_names_ == ["PU_DO=10_2", "PU_DO=1_2", "trip_distance"]
    np.testing.assert_array_equal(X.toarray(), [[0, 1, 2.5], [0, 0, 4.0]])


def test_matrix_round_trips_through_a_non_seekable_stream():
    df = pd.DataFrame({"PU_DO": ["1_2", "3_4"], "trip_distance": [1.0, 2.0], "duration": [5.0, 7.5]})
    X = features.transform(features.fit_vectorizer(df), df)
    buf = io.BytesIO()
    features.save_matrix(X, features.target(df), buf)

    class Stream:
        read = io.BytesIO(buf.getvalue()).read

    X2, y2 = features.load_matrix(Stream())
    assert_same_csr(X, X2)
    np.testing.assert_array_equal(y2, [5.0, 7.5])


def test_the_feature_set_is_part_of_the_cache_key_of_every_task_after_it(luigi_config):
    """Changing [BuildFeatures] feature_set gives the features, the tuning, the model and its registration new
    paths: nothing made with one set is reused for the other."""
    from taxi import tasks

    def paths() -> list[str]:
        return [tasks.BuildFeatures(year=2021, month=1).output()["train"].path,
                tasks.TuneHyperparams(year=2021, month=1).output().path,
                tasks.TrainModel(year=2021, month=1).output()["booster"].path,
                tasks.RegisterModel(year=2021, month=1).output()["registration.json"].path]

    clock = paths()
    assert tasks.BuildFeatures(year=2021, month=1).feature_set == "clock"
    config = luigi.configuration.get_config()
    config.set("BuildFeatures", "feature_set", "course")
    try:
        course = paths()
    finally:
        config.remove_option("BuildFeatures", "feature_set")
    assert all(a != b for a, b in zip(clock, course)), (clock, course)
    assert tasks.BuildFeatures(year=2021, month=1).output()["train"].path == clock[0]
