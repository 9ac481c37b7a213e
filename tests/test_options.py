"""Job options without Spark: the four layers (command line > Spark conf > defaults file > built-in) and checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fruits.options import (
    DEFAULTS_CONF_KEY,
    OPTIONS,
    JobOptions,
    UsageError,
    build_parser,
    check_output,
    conf_key,
    default,
    flag,
    option_names,
    parse_options,
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


def test_the_readme_names_every_engine_of_the_one_list():
    from fruits.engines import ENGINES

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (row,) = [line for line in readme.splitlines() if line.startswith("| `--engine`")]
    assert [engine for engine in ENGINES if f"`{engine}`" not in row] == []
    assert "| `--calibration`" in readme and "| `--calibration-images`" in readme
