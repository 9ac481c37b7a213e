"""Context keys: one list of defaults (cdk.json equals config.DEFAULTS), typed parsing of -c strings."""

from __future__ import annotations

import pytest
from aws_cdk import App
from cdkapp import CDK_JSON
from fruits_infra.config import DEFAULTS, ConfigError, FruitsConfig
from fruits_infra.job_contract import ENGINES


def test_cdk_json_documents_every_context_key_with_its_default():
    documented = {k: v for k, v in CDK_JSON["context"].items() if not k.startswith("@aws-cdk")}
    assert documented == DEFAULTS


def test_cdk_json_runs_the_app_with_python3():
    assert CDK_JSON["app"] == "python3 cdk/app.py"


def test_defaults_build_a_valid_config():
    config = FruitsConfig.from_context(App().node)
    assert config == FruitsConfig()
    assert config.release_label == "emr-7.13.0"
    assert not config.ephemeral and config.deploy_step and not config.task_capacity


def test_command_line_strings_are_parsed_to_the_default_types():
    app = App(
        context={
            "ephemeral": "true",
            "coreInstanceCount": "3",
            "taskSpotCount": "2",
            "subnetIds": "subnet-1",
            "vpcId": "vpc-1",
            "stepArguments": '["--k", "50"]',
            "coreInstanceTypes": "m5.2xlarge,m6i.2xlarge",
            "pcaVariance": "0.95",
            "deployStep": "false",
            "calibration": "s3://my-calibration/fruits/",
        }
    )
    config = FruitsConfig.from_context(app.node)
    assert config.ephemeral is True and config.deploy_step is False
    assert config.core_instance_count == 3 and config.task_spot_count == 2
    assert config.subnet_ids == ("subnet-1",) and config.vpc_id == "vpc-1"
    assert config.step_arguments == ("--k", "50")
    assert config.core_instance_types == ("m5.2xlarge", "m6i.2xlarge")
    assert config.pca_variance == pytest.approx(0.95)
    assert config.calibration == "s3://my-calibration/fruits/" and FruitsConfig().calibration is None


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"releaseLabel": "7.13"}, "releaseLabel"),
        ({"instanceMode": "spot"}, "instanceMode"),
        ({"idleTimeoutSeconds": 10}, "idleTimeoutSeconds"),
        ({"coreInstanceCount": 0}, "coreInstanceCount"),
        ({"vpcId": "vpc-1"}, "vpcId and subnetIds"),
        ({"vpcId": "vpc-1", "subnetIds": ["a", "b"]}, "exactly one subnet"),
        ({"inTransitCertificatesUri": "https://x/certs.zip"}, "inTransitCertificatesUri"),
        ({"weightsUri": "s3://bucket/models/w.bin"}, "weightsUri"),
        ({"ephemeral": "yes"}, "true or false"),
        ({"taskSpotCount": 9}, "scalingMaxUnits"),
        ({"coreInstanceTypes": ["m6g.xlarge"]}, r"Graviton \(aarch64\).*no aarch64 wheel.*pypi\.org"),
        ({"taskInstanceTypes": ["c7gn.2xlarge"]}, "Graviton"),
        ({"primaryInstanceTypes": ["r6gd.xlarge"]}, "Graviton"),
        ({"coreInstanceTypes": ["m5.large"]}, "not in the sizing table"),
        (
            {"weightsUri": "s3://my-models/models/mobilenet_2_5_224_tf_no_top.h5"},
            "holds mobilenet alpha 0.25 weights",
        ),
        (
            {
                "weightsUri": "s3://my-models/models/mobilenet_2_5_224_tf_no_top.h5",
                "model": "mobilenet",
                "alpha": 0.5,
            },
            "configured for model mobilenet alpha 0.5",
        ),
        ({"model": "mobilenet", "alpha": 0.3}, "alpha 0.3 is not available"),
        ({"model": "vgg16"}, "model must be one of"),
        ({"stage": "Prod_1"}, "stage"),
        ({"osReleaseLabel": "2.0.20220218.1"}, "osReleaseLabel"),
        ({"clusterGeneration": 0}, "clusterGeneration"),
        ({"weightsSha256": "ABC"}, "weightsSha256 must be 64 lower-case hex digits"),
        ({"pipIndexUrl": "http://pypi.internal/simple/"}, "pipIndexUrl must be an https:// URL"),
        ({"wheelhouse": "true", "pipIndexUrl": "https://pypi.internal/simple/"}, "not both"),
        ({"calibration": "https://b/calibration/"}, "calibration must be an s3:// prefix"),
        ({"calibration": "s3://b"}, "calibration must be an s3:// prefix"),
    ],
)
def test_bad_context_is_refused_with_the_key_named(context, message):
    with pytest.raises(ConfigError, match=message):
        FruitsConfig.from_context(App(context=context).node)


def test_weights_named_for_the_configured_model_are_accepted():
    app = App(
        context={
            "weightsUri": "s3://my-models/models/mobilenet_2_5_224_tf_no_top.h5",
            "model": "mobilenet",
            "alpha": "0.25",
        }
    )
    assert FruitsConfig.from_context(app.node).job_alpha == 0.25


def test_stage_and_generation_name_the_stacks_and_the_cluster():
    default = FruitsConfig()
    assert default.stack_name("FruitsEmrStack") == "FruitsEmrStack"
    assert default.full_cluster_name == "fruits-featurize-g1"
    dev = FruitsConfig.from_context(App(context={"stage": "dev", "clusterGeneration": "3"}).node)
    assert dev.stack_name("FruitsEmrStack") == "FruitsEmrStack-dev"
    assert dev.full_cluster_name == "fruits-featurize-dev-g3"


@pytest.mark.parametrize("engine", ENGINES)
def test_every_engine_of_the_job_is_a_valid_engine_context(engine):
    assert FruitsConfig.from_context(App(context={"engine": engine}).node).engine == engine


def test_an_unknown_engine_is_refused_naming_the_job_engines():
    with pytest.raises(ConfigError, match=f"engine must be one of {', '.join(ENGINES)}, got 'onnx'"):
        FruitsConfig.from_context(App(context={"engine": "onnx"}).node)
