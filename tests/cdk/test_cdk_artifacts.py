"""The job bundle (deterministic zip, exact key layout) and its BucketDeployment."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from aws_cdk import aws_s3 as s3
from aws_cdk.assertions import Match, Template
from cdkapp import REPO
from fruits_infra.artifacts import (
    JOB_DEFAULTS_KEY,
    PYFILES_KEY,
    SCRIPT_KEY,
    JobArtifacts,
    bootstrap_digest,
    bootstrap_keys,
    build_bundle,
    write_deterministic_zip,
)

BOOTSTRAP_KEY, REQUIREMENTS_KEY = bootstrap_keys(
    bootstrap_digest(
        REPO / "bootstrap" / "install-runtime.sh", REPO / "bootstrap" / "cluster-requirements.txt"
    )
)


@pytest.fixture
def fake_jobs(tmp_path: Path) -> Path:
    jobs = tmp_path / "jobs"
    (jobs / "fruits" / "sub").mkdir(parents=True)
    (jobs / "featurize_pca.py").write_text("import fruits\nprint(fruits.VALUE)\n")
    (jobs / "fruits" / "__init__.py").write_text("VALUE = 42\n")
    (jobs / "fruits" / "sub" / "__init__.py").write_text("")
    (jobs / "fruits" / "sub" / "mod.py").write_text("X = 1\n")
    (jobs / "fruits" / "__pycache__").mkdir()
    (jobs / "fruits" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"junk")
    (jobs / "fruits" / "stray.pyc").write_bytes(b"junk")
    return jobs


def _bundle(tmp_path: Path, jobs: Path, name: str = "bundle") -> tuple[Path, list[str]]:
    out = tmp_path / name
    return out, build_bundle(out, jobs_dir=jobs)


def test_bundle_has_exactly_the_four_deployed_keys(tmp_path, fake_jobs):
    _, keys = _bundle(tmp_path, fake_jobs)
    assert keys == sorted([SCRIPT_KEY, PYFILES_KEY, BOOTSTRAP_KEY, REQUIREMENTS_KEY])
    assert SCRIPT_KEY == "job/featurize_pca.py" and PYFILES_KEY == "job/fruits.zip"
    assert re.fullmatch(r"bootstrap/[0-9a-f]{16}/install-runtime\.sh", BOOTSTRAP_KEY)
    assert BOOTSTRAP_KEY.replace("install-runtime.sh", "requirements.txt") == REQUIREMENTS_KEY


def test_bootstrap_keys_hash_both_bootstrap_files_and_nothing_else(tmp_path, fake_jobs):
    requirements = tmp_path / "requirements.txt"
    requirements.write_bytes((REPO / "bootstrap" / "cluster-requirements.txt").read_bytes())
    _, before = _bundle(tmp_path, fake_jobs, "before")
    (fake_jobs / "fruits" / "sub" / "mod.py").write_text("X = 2\n")  # a job change
    _, job_changed = _bundle(tmp_path, fake_jobs, "job")
    requirements.write_bytes(requirements.read_bytes() + b"six==1.17.0\n")  # a pin change
    pins_changed = build_bundle(tmp_path / "pins", jobs_dir=fake_jobs, requirements=requirements)
    assert job_changed == before
    assert {k for k in pins_changed if k.startswith("job/")} == {k for k in before if k.startswith("job/")}
    assert {k for k in pins_changed if k.startswith("bootstrap/")}.isdisjoint(before)


def test_requirements_and_bootstrap_are_copied_unchanged(tmp_path, fake_jobs):
    out, _ = _bundle(tmp_path, fake_jobs)
    assert (out / REQUIREMENTS_KEY).read_bytes() == (
        REPO / "bootstrap" / "cluster-requirements.txt"
    ).read_bytes()
    assert (out / BOOTSTRAP_KEY).read_bytes() == (REPO / "bootstrap" / "install-runtime.sh").read_bytes()


def test_zip_has_the_package_at_its_root_sorted_without_caches(tmp_path, fake_jobs):
    out, _ = _bundle(tmp_path, fake_jobs)
    with zipfile.ZipFile(out / PYFILES_KEY) as zf:
        names = zf.namelist()
        assert names == ["fruits/__init__.py", "fruits/sub/__init__.py", "fruits/sub/mod.py"]
        assert {info.date_time for info in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_zip_is_byte_identical_across_builds(tmp_path, fake_jobs):
    first, _ = _bundle(tmp_path, fake_jobs, "a")
    (fake_jobs / "fruits" / "sub" / "mod.py").touch()  # a new mtime must not change the bytes
    second, _ = _bundle(tmp_path, fake_jobs, "b")
    digest = [hashlib.sha256((d / PYFILES_KEY).read_bytes()).hexdigest() for d in (first, second)]
    assert digest[0] == digest[1]


def test_zip_works_with_py_files(tmp_path, fake_jobs):
    out, _ = _bundle(tmp_path, fake_jobs)
    result = subprocess.run(
        [sys.executable, str(out / SCRIPT_KEY)],
        env={"PYTHONPATH": str(out / PYFILES_KEY)},
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    assert result.stdout.strip() == "42"


def test_the_real_job_package_zips(tmp_path):
    names = write_deterministic_zip(REPO / "jobs" / "fruits", tmp_path / "fruits.zip")
    assert "fruits/__init__.py" in names and not any("__pycache__" in n for n in names)


def test_missing_sources_fail_loudly(tmp_path, fake_jobs):
    (fake_jobs / "featurize_pca.py").unlink()
    with pytest.raises(FileNotFoundError, match=r"featurize_pca\.py"):
        build_bundle(tmp_path / "out", jobs_dir=fake_jobs)


def test_deployment_writes_to_the_artifacts_bucket_and_only_names_deployed_keys(
    bare_stack, tmp_path, fake_jobs
):
    out, _ = _bundle(tmp_path, fake_jobs)
    stack = bare_stack()
    bucket = s3.Bucket(stack, "Artifacts")
    artifacts = JobArtifacts(stack, "Artifacts2", bucket=bucket, bundle_dir=out)
    template = Template.from_stack(stack)
    template.has_resource_properties(
        "Custom::CDKBucketDeployment",
        {"DestinationBucketName": {"Ref": stack.get_logical_id(bucket.node.default_child)}, "Prune": False},
    )
    template.has_resource_properties(
        "Custom::CDKBucketDeployment", Match.not_({"DestinationBucketKeyPrefix": Match.any_value()})
    )
    assert stack.resolve(artifacts.script_uri) == {
        "Fn::Join": [
            "",
            ["s3://", {"Ref": stack.get_logical_id(bucket.node.default_child)}, "/job/featurize_pca.py"],
        ]
    }
    with pytest.raises(KeyError, match="not deployed"):
        artifacts.uri("job/other.py")
    with pytest.raises(KeyError, match="not deployed"):
        artifacts.uri(JOB_DEFAULTS_KEY)  # no job defaults given: none written


def test_job_defaults_are_deployed_as_json_and_the_handler_logs_expire(bare_stack, tmp_path, fake_jobs):
    out, _ = _bundle(tmp_path, fake_jobs)
    stack = bare_stack()
    bucket = s3.Bucket(stack, "Artifacts")
    artifacts = JobArtifacts(
        stack, "Artifacts2", bucket=bucket, bundle_dir=out, job_defaults={"input": "s3://b/images/", "k": 5}
    )
    assert stack.resolve(artifacts.uri(JOB_DEFAULTS_KEY))["Fn::Join"][1][-1] == "/config/job-defaults.json"
    template = Template.from_stack(stack)
    keys = template.find_resources("Custom::CDKBucketDeployment")
    (deployment,) = keys.values()
    assert len(deployment["Properties"]["SourceObjectKeys"]) == 2  # the bundle and the JSON file
    # The deployment handler's logs: a month, deleted with the stack (not Lambda's default: kept forever).
    template.has_resource(
        "AWS::Logs::LogGroup",
        {"Properties": {"RetentionInDays": 30}, "DeletionPolicy": "Delete", "UpdateReplacePolicy": "Delete"},
    )
    (function,) = template.find_resources(
        "AWS::Lambda::Function",
        {"Properties": {"Handler": "index.handler", "LoggingConfig": Match.any_value()}},
    ).values()
    (log_group_id,) = template.find_resources("AWS::Logs::LogGroup")
    assert function["Properties"]["LoggingConfig"] == {"LogGroup": {"Ref": log_group_id}}
    assert JOB_DEFAULTS_KEY in artifacts.deployed_keys
