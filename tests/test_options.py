"""Job options without Spark: the four layers (command line > Spark conf > defaults file > built-in) and checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fruits.options import (
    CONF_PREFIX,
    DEFAULTS_CONF_KEY,
    OPTIONS,
    JobOptions,
    UsageError,
    build_parser,
    check_command_line,
    check_output,
    closest,
    conf_key,
    default,
    flag,
    option_names,
    parse_options,
    valid_local_command,
)
from tests.conftest import as_unprivileged

BASE = {"input": "s3://in/images/", "output": "s3://out/results/"}


def _file(tmp_path: Path, document: object) -> str:
    path = tmp_path / "config" / "job-defaults.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
    return str(path)


def test_defaults_file_named_by_the_spark_conf_is_read(tmp_path):
    uri = _file(tmp_path, {**BASE, "model": "mobilenet", "alpha": 0.25, "k": 7, "overwrite": True})
    options = parse_options([], {DEFAULTS_CONF_KEY: uri})
    assert (options.input, options.output) == (BASE["input"], BASE["output"])
    assert (options.model, options.alpha, options.k, options.variance, options.overwrite) == (
        "mobilenet",
        0.25,
        7,
        None,
        True,
    )


def test_precedence_command_line_then_conf_then_file_then_built_in(tmp_path):
    uri = _file(tmp_path, {**BASE, "engine": "keras", "batch_size": 16, "image_size": 160})
    conf = {DEFAULTS_CONF_KEY: uri, "spark.fruits.batchSize": "32", "spark.fruits.imageSize": "192"}
    options = parse_options(["--image-size", "96"], conf)
    assert options.image_size == 96  # command line
    assert options.batch_size == 32  # Spark conf over the file
    assert options.engine == "keras"  # file over the built-in default
    assert options.decode_size == JobOptions(input="i", output="o").decode_size  # built-in


@pytest.mark.parametrize(
    ("argv", "conf", "file", "expected"),
    [
        ([], {}, {}, (None, 0.95)),
        ([], {}, {"k": 50}, (50, None)),
        ([], {"spark.fruits.variance": "0.8"}, {"k": 50}, (None, 0.8)),
        (["--variance", "0.9"], {"spark.fruits.k": "50"}, {}, (None, 0.9)),
        (["--k", "3"], {"spark.fruits.variance": "0.8"}, {"variance": 0.7}, (3, None)),
    ],
)
def test_k_and_variance_come_from_the_highest_layer_that_sets_either(argv, conf, file, expected):
    options = parse_options(argv, conf, {**BASE, **file})
    assert (options.k, options.variance) == expected


def test_both_k_and_variance_in_one_layer_are_refused():
    with pytest.raises(UsageError, match="not both"):
        parse_options([], {}, {**BASE, "k": 5, "variance": 0.9})


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({**BASE, "pca_k": 5}, "key 'pca_k': unknown option"),
        ({**BASE, "k": 0}, "key 'k': must be >= 1"),
        ({**BASE, "engine": "onnx"}, "key 'engine': invalid choice"),
        ({**BASE, "overwrite": "yes"}, "key 'overwrite': must be true or false"),
        ({**BASE, "image_size": "big"}, "key 'image_size': must be a whole number"),
        ({**BASE, "alpha": "nan"}, "key 'alpha': must be a finite number"),
        ({**BASE, "model": ["mobilenet"]}, "key 'model': invalid value"),
    ],
)
def test_a_bad_file_is_one_usage_error_naming_the_key_and_the_file(tmp_path, document, message):
    uri = _file(tmp_path, document)
    with pytest.raises(UsageError) as caught:
        parse_options([], {DEFAULTS_CONF_KEY: uri})
    text = str(caught.value)
    assert message in text and uri in text and "\n" not in text


@pytest.mark.parametrize(
    ("content", "message"), [(None, "not found"), ("{not json", "not valid JSON"), ("[1]", "JSON object")]
)
def test_a_missing_or_malformed_file_is_one_usage_error(tmp_path, content, message):
    path = tmp_path / "job-defaults.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UsageError, match=message):
        parse_options([], {DEFAULTS_CONF_KEY: str(path)})


def test_a_defaults_file_on_s3_is_read_through_the_job_s3_client(moto_s3):
    moto_s3.client.put_object(
        Bucket=moto_s3.bucket, Key="config/job-defaults.json", Body=json.dumps({**BASE, "k": 9}).encode()
    )
    options = parse_options([], {DEFAULTS_CONF_KEY: f"s3://{moto_s3.bucket}/config/job-defaults.json"})
    assert options.k == 9 and options.input == BASE["input"]


def test_allow_empty_from_the_command_line_the_conf_and_the_file():
    assert parse_options(["--allow-empty"], {}, BASE).allow_empty is True
    assert parse_options([], {"spark.fruits.allowEmpty": "true"}, BASE).allow_empty is True
    assert parse_options([], {}, {**BASE, "allow_empty": True}).allow_empty is True
    assert parse_options([], {}, BASE).allow_empty is False


def test_conf_values_get_the_command_line_checks():
    with pytest.raises(UsageError, match=r"spark\.fruits\.k: must be >= 1"):
        parse_options([], {"spark.fruits.k": "0"}, BASE)


def test_every_option_name_is_a_field_and_a_flag():
    assert option_names() == [name for name in JobOptions.__dataclass_fields__]
    assert "allow_empty" in option_names()


NUMBERS = [option for option in OPTIONS if option.kind in ("int", "float")]


def test_every_option_is_declared_once_with_its_field():
    assert [option.name for option in OPTIONS] == option_names()


@pytest.mark.parametrize("option", NUMBERS, ids=lambda option: option.name)
def test_every_number_is_bounded_on_every_layer(option):
    """Below the low bound, above the high bound, not finite: one UsageError, from argv, conf and file alike."""
    bad = ["nan", "inf"]
    if option.low is not None:
        bad.append(str(option.low if option.low_open else option.low - 1))
    if option.high is not None:
        bad.append(str(option.high * 10 + 1))
    for value in bad:
        for argv, conf, file in (
            ([flag(option.name), value], {}, BASE),
            ([], {conf_key(option.name): value}, BASE),
            ([], {}, {**BASE, option.name: value}),
        ):
            with pytest.raises(UsageError, match="must be") as caught:
                parse_options(argv, conf, file)
            assert "\n" not in str(caught.value)


@pytest.mark.parametrize("option", NUMBERS, ids=lambda option: option.name)
def test_every_number_accepts_its_default_or_a_value_in_range(option):
    value = default(option.name)
    if value is None:
        value = option.low + 1 if option.low is not None else 1
    argv = [flag(option.name), str(value)]
    if option.name == "alpha":
        argv = ["--model", "mobilenet", "--alpha", "0.25"]
    assert parse_options(argv, {}, BASE) is not None


def test_help_lists_every_option_with_its_conf_key(capsys):
    build_parser().print_help()
    text = capsys.readouterr().out
    for option in OPTIONS:
        assert flag(option.name) in text and conf_key(option.name) in text


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "file.txt", "is a file"),
        (lambda tmp: tmp / "file.txt" / "below", "is a file, so the folder cannot be created"),
    ],
)
def test_an_output_that_cannot_be_a_folder_is_refused_before_spark(tmp_path, make, message):
    (tmp_path / "file.txt").write_text("x")
    options = parse_options(["--input", str(tmp_path), "--output", str(make(tmp_path))])
    with pytest.raises(UsageError, match=message):
        check_output(options)


def test_an_output_in_a_read_only_folder_is_refused(shared_tmp):
    locked = shared_tmp / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    options = parse_options(["--input", str(shared_tmp), "--output", str(locked / "out")])
    with pytest.raises(UsageError, match="is not writable"):
        as_unprivileged(check_output, options)


def test_the_calibration_of_litert_int8_comes_from_any_layer_and_is_bounded(tmp_path):
    uri = _file(tmp_path, {**BASE, "engine": "litert-int8", "calibration": "s3://in/calibration/"})
    options = parse_options(["--calibration-images", "50"], {DEFAULTS_CONF_KEY: uri})
    assert (options.engine, options.calibration, options.calibration_images) == (
        "litert-int8",
        "s3://in/calibration/",
        50,
    )
    assert parse_options([], {}, BASE).calibration == ""  # the input itself
    with pytest.raises(UsageError, match=r"spark\.fruits\.calibrationImages: must be >= 1"):
        parse_options([], {"spark.fruits.calibrationImages": "0"}, BASE)


def test_a_pinned_calibration_source_of_litert_int8_is_checked_before_spark(tmp_path, moto_s3):
    (tmp_path / "in").mkdir()
    run = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]
    missing = ["--calibration", str(tmp_path / "no-such-folder")]
    with pytest.raises(UsageError, match=r"^--calibration: input not found: .*no-such-folder$"):
        check_command_line([*run, "--engine", "litert-int8", *missing])
    assert check_command_line([*run, *missing]) is True  # a float engine never reads it
    empty = ["--calibration", moto_s3.uri("calibration")]
    with pytest.raises(UsageError, match=r"^--calibration: input is empty: no files under s3://"):
        check_command_line([*run, "--engine", "litert-int8", *empty])
    moto_s3.client.put_object(Bucket=moto_s3.bucket, Key="calibration/Kiwi/0.jpg", Body=b"x")
    assert check_command_line([*run, "--engine", "litert-int8", *empty]) is True


def test_the_readme_names_every_engine_of_the_one_list():
    from fruits.engines import ENGINES

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (row,) = [line for line in readme.splitlines() if line.startswith("| `--engine`")]
    assert [engine for engine in ENGINES if f"`{engine}`" not in row] == []
    assert "| `--calibration`" in readme and "| `--calibration-images`" in readme


# --- one rule on every layer: unknown, misspelt, abbreviated and repeated options ------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--vari", "0.9"], "--vari: unknown option (did you mean --variance?)"),
        (["--overw"], "--overw: unknown option (did you mean --overwrite?)"),
        (["--image_size", "96"], "--image_size: unknown option (did you mean --image-size?)"),
        (["--k=3", "--kk=4"], "--kk: unknown option (did you mean --k?)"),
        (["--k", "3", "--k", "4"], "argument --k: given twice"),
        (["--k=3", "--k", "3"], "argument --k: given twice"),
        (["--overwrite", "--overwrite"], "argument --overwrite: given twice"),
        (["--k", "3", "stray"], "unexpected argument 'stray'"),
    ],
)
def test_abbreviated_unknown_and_repeated_flags_are_refused_naming_the_flag(argv, message):
    with pytest.raises(UsageError) as caught:
        parse_options(argv, {}, BASE)
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("key", "meant"),
    [
        ("spark.fruits.image_size", "spark.fruits.imageSize"),
        ("spark.fruits.imagesize", "spark.fruits.imageSize"),
        ("spark.fruits.overwrit", "spark.fruits.overwrite"),
        ("spark.fruits.Defaults", "spark.fruits.defaults"),
    ],
)
def test_an_unknown_spark_fruits_conf_key_is_refused_naming_the_closest(key, meant):
    with pytest.raises(UsageError) as caught:
        parse_options([], {key: "128"}, BASE)
    assert str(caught.value) == f"Spark conf key {key}: unknown option (did you mean {meant}?)"


def test_conf_keys_of_other_programs_are_not_the_jobs_business():
    conf = {"spark.executor.memory": "4g", "spark.fruitsy": "x", "spark.fruits.imageSize": "96"}
    assert parse_options([], conf, BASE).image_size == 96


def test_a_misspelt_defaults_file_key_names_the_closest():
    with pytest.raises(UsageError, match=r"key 'image_szie': unknown option \(did you mean image_size\?\)"):
        parse_options([], {}, {**BASE, "image_szie": 96})


KEY_TAILS = st.text(st.characters(codec="ascii", categories=("L", "N", "P")), min_size=1, max_size=20)


@settings(max_examples=200, deadline=None)
@given(tail=KEY_TAILS)
def test_every_spark_fruits_key_is_an_option_or_refused_in_one_line(tail):
    key = CONF_PREFIX + tail
    known = {conf_key(name) for name in option_names()} | {DEFAULTS_CONF_KEY}
    if key in known:
        return
    with pytest.raises(UsageError) as caught:
        parse_options([], {key: "1"}, BASE)
    text = str(caught.value)
    assert text.startswith(f"Spark conf key {key}: unknown option") and "\n" not in text
    meant = closest(key, sorted(known))
    assert meant is None or meant in known


@settings(max_examples=200, deadline=None)
@given(name=st.text(st.characters(codec="ascii", categories=("L", "N", "P")), min_size=1, max_size=20))
def test_every_defaults_file_key_is_an_option_or_refused_in_one_line(name):
    if name in option_names():
        return
    with pytest.raises(UsageError) as caught:
        parse_options([], {}, {**BASE, name: "1"})
    assert f"key {name!r}: unknown option" in str(caught.value) and "\n" not in str(caught.value)


# --- locations, before Spark starts -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "location", "message"),
    [
        ("input", "gs://bucket/images", "unsupported input 'gs://bucket/images'"),
        ("input", "hdfs://namenode/images", "unsupported input"),
        ("input", "file://otherhost/images", "otherhost is another host"),
        ("input", "s3:///images", "names no bucket"),
        ("input", "{tmp}/missing", "input not found"),
        ("input", "file://{tmp}/missing", "input not found"),
        ("input", "{tmp}/a-file.jpg", "input is not a folder"),
        ("output", "gs://bucket/out", "--output gs://bucket/out: unsupported storage URI"),
        ("output", "hdfs://namenode/out", "--output hdfs://namenode/out: unsupported storage URI"),
        ("output", "file://otherhost/out", "remote host is not supported"),
        ("output", "file:{tmp}/a-file.jpg", "is a file"),
        ("feature_store", "gs://bucket/fs", "--feature-store gs://bucket/fs: unsupported storage URI"),
    ],
)
def test_a_location_the_job_cannot_use_is_refused_before_spark(tmp_path, where, location, message):
    (tmp_path / "in").mkdir()
    (tmp_path / "a-file.jpg").write_bytes(b"x")
    given = {"input": str(tmp_path / "in"), "output": str(tmp_path / "out")}
    given[where] = location.format(tmp=tmp_path)
    argv = [word for name, value in given.items() for word in (flag(name), value)]
    with pytest.raises(UsageError) as caught:
        check_command_line(argv)
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("form", ["{tmp}/in", "file:{tmp}/in", "file://{tmp}/in", "file://localhost{tmp}/in"])
def test_every_spelling_of_a_local_input_is_accepted_before_spark(tmp_path, form):
    (tmp_path / "in").mkdir()
    argv = ["--input", form.format(tmp=tmp_path), "--output", str(tmp_path / "out")]
    assert check_command_line(argv) is True


def test_an_s3_input_is_checked_with_one_request_and_no_jvm(moto_s3, tmp_path):
    out = ["--output", str(tmp_path / "out")]
    with pytest.raises(UsageError, match="bucket no-such-bucket-x does not exist"):
        check_command_line(["--input", "s3://no-such-bucket-x/images", *out])
    with pytest.raises(UsageError, match=f"input is empty: no files under {moto_s3.uri('images')}"):
        check_command_line(["--input", moto_s3.uri("images"), *out])
    assert check_command_line(["--input", moto_s3.uri("images"), "--allow-empty", *out]) is True
    assert (
        check_command_line(["--input", moto_s3.uri("images"), "--check", *out]) is True
    )  # lists, reads none
    moto_s3.client.put_object(Bucket=moto_s3.bucket, Key="images/Apple/a.jpg", Body=b"x")
    assert check_command_line(["--input", moto_s3.uri("images"), *out]) is True
    # The early JVM's check makes no request: it waits for the job's own check.
    assert valid_local_command(["--input", "s3://no-such-bucket-x/images", *out]) is True


def test_flags_are_checked_before_spark_even_when_the_rest_comes_from_the_conf():
    with pytest.raises(UsageError, match="did you mean --variance"):
        check_command_line(["--vari", "0.9"])  # no --input/--output: they may come from the conf
    assert check_command_line(["--k", "5"]) is False


def test_the_job_reports_a_bad_location_in_one_line_without_starting_spark(tmp_path, monkeypatch, capsys):
    import fruits.job

    def no_spark(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("Spark was started")

    monkeypatch.setattr(fruits.job, "get_session", no_spark)
    for location in ("gs://bucket/images", str(tmp_path / "missing")):
        status = fruits.job.main(["--input", location, "--output", str(tmp_path / "out")])
        lines = capsys.readouterr().err.strip().splitlines()
        assert status == 2 and len(lines) == 1 and location in lines[0]
