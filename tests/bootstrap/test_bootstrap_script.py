"""bootstrap/install-runtime.sh run for real against stand-in dnf, sudo, aws, curl and python3.11 on PATH.

The stand-ins record every call in a log; "S3" and "the web" are folders; the fake pip "installs" the pins of the
-r file into a freeze list, so the script's own verification runs against what was installed. The real thing (a
real pip into a clean interpreter from a wheelhouse, a real download, as an unprivileged user with sudo) runs in
the cloud rehearsal (tests/rehearsal).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bootstrap" / "install-runtime.sh"
REQUIREMENTS = REPO / "bootstrap" / "cluster-requirements.txt"  # what the CDK app uploads
REQ_URI = "s3://artifacts-bucket/bootstrap/requirements.txt"
WEIGHTS_FILE = "mobilenet_2_5_224_tf_no_top.h5"
WEIGHTS_URL = f"https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/{WEIGHTS_FILE}"
WEIGHTS_ARGS = ("--weights-url", WEIGHTS_URL, "--weights-file", WEIGHTS_FILE)
WEIGHTS = b"keras weights"
WEIGHTS_SHA256 = hashlib.sha256(WEIGHTS).hexdigest()
PYPI = "https://pypi.org/simple/"
WHEELHOUSE = "s3://artifacts-bucket/wheelhouse/0123456789abcdef/"

FAKES = {
    "sudo": '#!/usr/bin/env bash\necho "sudo $*" >> "$FAKE_LOG"\nexec "$@"\n',
    "dnf": '#!/usr/bin/env bash\necho "dnf $*" >> "$FAKE_LOG"\n',
    "aws": r"""#!/usr/bin/env bash
set -euo pipefail
echo "aws $*" >> "$FAKE_LOG"
[[ "$*" == "s3 cp "* ]] || { echo "fake aws: unsupported $*" >&2; exit 2; }
shift 2
recursive=""
[[ "$1" == --recursive ]] && { recursive=1; shift; }
[[ "$1" == --only-show-errors ]] && shift
src="$1" dst="$2"
fails="${FAKE_FAILS_DIR}/$(echo "$src" | tr '/:' '__')"
if [[ -f "$fails" ]] && (( $(cat "$fails") > 0 )); then
  echo $(( $(cat "$fails") - 1 )) > "$fails"
  echo "fake aws: simulated network error for $src" >&2
  exit 1
fi
if [[ -n "$recursive" ]]; then
  mkdir -p "$dst"
  if [[ -d "${FAKE_S3}/${src#s3://}" ]]; then cp -r "${FAKE_S3}/${src#s3://}/." "$dst/"; fi
  exit 0
fi
cp "${FAKE_S3}/${src#s3://}" "$dst"
""",
    "python3.11": r"""#!/usr/bin/env bash
set -euo pipefail
echo "python $*" >> "$FAKE_LOG"
if [[ "$1" == --version ]]; then echo "Python 3.11.14"; exit 0; fi
if [[ "$*" == "-m pip install "* ]]; then
  req=""
  while (( $# > 0 )); do [[ "$1" == -r ]] && req="$2"; shift; done
  cp "$req" "${FAKE_SITE}/last-requirements.txt"
  grep -E '^[A-Za-z0-9._-]+==' "$req" | sed -e "s/[[:space:]].*//" ${FAKE_PIP_SED:+-e "$FAKE_PIP_SED"} > "${FAKE_SITE}/freeze.txt"
  exit 0
fi
if [[ "$*" == "-m pip freeze"* ]]; then cat "${FAKE_SITE}/freeze.txt" 2>/dev/null || true; exit 0; fi
echo "fake python: unsupported $*" >&2; exit 2
""",
    # The "web": FAKE_WEB/<host>/<path> answers https://<host>/<path>; FAKE_FAILS_DIR makes it fail N times.
    "curl": r"""#!/usr/bin/env bash
set -euo pipefail
echo "curl $*" >> "$FAKE_LOG"
out="" url=""
while (( $# > 0 )); do
  case "$1" in
    --output) out="$2"; shift 2 ;;
    --connect-timeout|--max-time) shift 2 ;;
    -*) shift ;;
    *) url="$1"; shift ;;
  esac
done
fails="${FAKE_FAILS_DIR}/$(echo "$url" | tr '/:' '__')"
if [[ -f "$fails" ]] && (( $(cat "$fails") > 0 )); then
  echo $(( $(cat "$fails") - 1 )) > "$fails"
  echo "curl: (6) Could not resolve host" >&2
  exit 6
fi
src="${FAKE_WEB}/${url#https://}"
[[ "$src" == */ ]] && src="${src}index.html"
[[ -f "$src" ]] || { echo "curl: (22) The requested URL returned error: 404" >&2; exit 22; }
if [[ -n "$out" && "$out" != /dev/null ]]; then cp "$src" "$out"; fi
""",
}


class Node:
    """A fake node: bin dir with stand-ins, an S3 folder, and the system paths inside tmp_path."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path
        self.bin = tmp_path / "bin"
        self.s3 = tmp_path / "s3"
        self.web = tmp_path / "web"
        self.site = tmp_path / "site"
        self.fails = tmp_path / "fails"
        self.log = tmp_path / "calls.log"
        self.home = tmp_path / "opt" / "fruits"
        for d in (self.bin, self.site, self.fails):
            d.mkdir()
        for name, body in FAKES.items():
            path = self.bin / name
            path.write_text(body)
            path.chmod(path.stat().st_mode | stat.S_IXUSR)
        self.put(REQ_URI, REQUIREMENTS.read_bytes())
        self.serve(WEIGHTS_URL, WEIGHTS)
        self.serve(PYPI + "index.html", b"<html>the simple index</html>")
        self.log.touch()

    def serve(self, url: str, data: bytes) -> None:
        path = self.web / url.removeprefix("https://")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def put(self, uri: str, data: bytes) -> None:
        path = self.s3 / uri.removeprefix("s3://")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def fail(self, uri: str, times: int) -> None:
        (self.fails / uri.replace("/", "_").replace(":", "_")).write_text(str(times))

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        environment = {
            "PATH": f"{self.bin}:/usr/bin:/bin",
            "HOME": str(self.root),
            "FAKE_LOG": str(self.log),
            "FAKE_S3": str(self.s3),
            "FAKE_WEB": str(self.web),
            "FAKE_SITE": str(self.site),
            "FAKE_FAILS_DIR": str(self.fails),
            "FRUITS_HOME": str(self.home),
            "FRUITS_PYTHON": str(self.bin / "python3.11"),
            "FRUITS_RETRY_DELAY": "0",
            **env,
        }
        return subprocess.run(
            ["bash", str(SCRIPT), "--requirements", REQ_URI, *args],
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def calls(self, prefix: str) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if line.startswith(prefix)]


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path)


def _pins(text: str) -> list[str]:
    return sorted(
        line.split("#")[0].strip().removesuffix("\\").strip()
        for line in text.splitlines()
        if re.match(r"^[A-Za-z0-9._-]+==", line)
    )


def test_installs_python_311_and_exactly_the_pinned_requirements(node):
    result = node.run()
    assert result.returncode == 0, result.stderr
    assert node.calls("dnf") == ["dnf install -y python3.11 python3.11-pip python3.11-devel"]
    (install,) = node.calls("python -m pip install")
    assert "--no-cache-dir" in install and " -r " in install
    # Exactly the hashed wheels, nothing resolved on the node, from PyPI after one probe that it answers.
    for flag in ("--require-hashes", "--only-binary=:all:", "--no-deps", f"--index-url {PYPI}"):
        assert flag in install, flag
    assert [c for c in node.calls("curl") if "--head" in c and c.endswith(PYPI)]
    assert (node.site / "last-requirements.txt").read_bytes() == REQUIREMENTS.read_bytes()
    assert _pins((node.site / "freeze.txt").read_text()) == _pins(REQUIREMENTS.read_text())
    for name in ("tensorflow-cpu", "numpy", "pillow", "pandas", "pyarrow"):
        assert any(p.startswith(f"{name}==") for p in _pins(REQUIREMENTS.read_text())), name
    assert "runtime installed" in result.stderr


def test_no_version_is_hard_coded_in_the_script():
    text = SCRIPT.read_text()
    for pin in _pins(REQUIREMENTS.read_text()):
        name, version = pin.split("==")
        assert pin not in text and f"{name}=={version}" not in text


def test_downloads_the_named_weights_file_into_keras_home_read_only(node):
    result = node.run(*WEIGHTS_ARGS)
    assert result.returncode == 0, result.stderr
    target = node.home / "keras" / "models" / WEIGHTS_FILE
    assert target.read_bytes() == WEIGHTS
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    for folder in (node.home / "keras", node.home / "keras" / "models"):
        assert stat.S_IMODE(folder.stat().st_mode) & 0o022 == 0, folder  # nobody but root writes there
    (download,) = [c for c in node.calls("curl") if c.endswith(WEIGHTS_URL)]
    assert "--fail" in download
    assert f"sha256 {WEIGHTS_SHA256}" in result.stderr  # logged even when no digest was pinned
    assert not node.calls("python -c")  # no Keras, no model code: the file is fetched as named


def _downloads(node: Node) -> list[str]:
    return [c for c in node.calls("curl") if "--head" not in c]


def test_without_weights_arguments_nothing_is_downloaded(node):
    assert node.run().returncode == 0
    assert not _downloads(node) and not list((node.home / "keras" / "models").iterdir())


def test_the_script_knows_no_model_names():
    text = SCRIPT.read_text().lower()
    for word in ("mobilenet", "resnet", "efficientnet", "keras.applications", "imagenet_weights"):
        assert word not in text, word


def test_retries_a_failed_weights_download(node):
    node.fail(WEIGHTS_URL, 2)
    result = node.run(*WEIGHTS_ARGS)
    assert result.returncode == 0, result.stderr
    assert len(_downloads(node)) == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--weights-url", WEIGHTS_URL), "go together"),
        (("--weights-file", WEIGHTS_FILE), "go together"),
        (("--weights-url", WEIGHTS_URL, "--weights-file", "../../etc/x.h5"), "plain file name"),
        (("--weights-url", "http://example.com/x.h5", "--weights-file", "x.h5"), "https://"),
    ],
)
def test_refuses_bad_weights_arguments(node, args, message):
    result = node.run(*args)
    assert result.returncode != 0 and message in result.stderr
    assert not node.calls("curl") and not node.calls("dnf")


def test_checks_the_pinned_weights_digest(node):
    result = node.run(*WEIGHTS_ARGS, "--weights-sha256", WEIGHTS_SHA256)
    assert result.returncode == 0, result.stderr
    assert f"sha256 {WEIGHTS_SHA256} (as pinned)" in result.stderr


def test_refuses_weights_with_another_digest_and_installs_nothing(node):
    result = node.run(*WEIGHTS_ARGS, "--weights-sha256", "0" * 64)
    assert result.returncode != 0
    assert "expected " + "0" * 64 in result.stderr and "refusing them" in result.stderr
    assert not (node.home / "keras" / "models" / WEIGHTS_FILE).exists()


def test_a_present_weights_file_with_another_digest_is_refused(node):
    assert node.run(*WEIGHTS_ARGS).returncode == 0
    result = node.run(*WEIGHTS_ARGS, "--weights-sha256", "0" * 64)
    assert result.returncode != 0 and "refusing them" in result.stderr


def test_without_egress_fails_fast_with_one_line_saying_what_to_do(node):
    (node.web / "pypi.org" / "simple" / "index.html").unlink()  # the index does not answer
    result = node.run(FRUITS_RETRY_DELAY="0")
    assert result.returncode != 0
    assert not node.calls("python -m pip install")
    assert len([c for c in node.calls("curl") if "--head" in c]) == 2  # one retry, not half an hour of them
    (error,) = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert f"cannot reach the package index {PYPI}" in error and "-c wheelhouse=true" in error


def test_installs_from_a_private_index(node):
    index = "https://pypi.internal.example/simple/"
    node.serve(index + "index.html", b"<html/>")
    result = node.run("--index-url", index)
    assert result.returncode == 0, result.stderr
    (install,) = node.calls("python -m pip install")
    assert f"--index-url {index}" in install and "--require-hashes" in install


def test_installs_from_an_s3_wheelhouse_without_touching_an_index(node):
    node.put(WHEELHOUSE + "numpy-2.4.6-cp311-cp311-manylinux_2_28_x86_64.whl", b"wheel")
    result = node.run("--wheelhouse", WHEELHOUSE)
    assert result.returncode == 0, result.stderr
    assert node.calls(f"aws s3 cp --recursive --only-show-errors {WHEELHOUSE}")
    (install,) = node.calls("python -m pip install")
    assert "--no-index --find-links " in install and "--index-url" not in install
    assert "--require-hashes" in install
    assert not [c for c in node.calls("curl") if "--head" in c]


def test_an_empty_wheelhouse_says_how_to_fill_it(node):
    result = node.run("--wheelhouse", WHEELHOUSE)
    assert result.returncode != 0 and f"no wheels under {WHEELHOUSE}" in result.stderr
    assert not node.calls("python -m pip install")


def test_retries_a_failed_download(node):
    node.fail(REQ_URI, 2)
    result = node.run()
    assert result.returncode == 0, result.stderr
    assert len(node.calls(f"aws s3 cp --only-show-errors {REQ_URI}")) == 3
    assert "attempt 1/5 failed" in result.stderr and "attempt 2/5 failed" in result.stderr


def test_gives_up_loudly_after_the_last_retry(node):
    node.fail(REQ_URI, 10)
    result = node.run(FRUITS_RETRIES="3")
    assert result.returncode != 0
    assert len(node.calls("aws s3 cp")) == 3
    assert "giving up after 3 attempts" in result.stderr
    assert not node.calls("python -m pip install")


def test_safe_to_run_twice(node):
    first, second = node.run(*WEIGHTS_ARGS), node.run(*WEIGHTS_ARGS)
    assert first.returncode == 0 and second.returncode == 0, second.stderr
    assert len(node.calls("python -m pip install")) == 1
    assert len(_downloads(node)) == 1
    assert "skipping pip" in second.stderr and "already at" in second.stderr


def test_changed_requirements_reinstall(node):
    assert node.run().returncode == 0
    node.put(REQ_URI, REQUIREMENTS.read_bytes() + b"six==1.17.0 --hash=sha256:" + b"1" * 64 + b"\n")
    assert node.run().returncode == 0
    assert len(node.calls("python -m pip install")) == 2


def test_copies_custom_weights_instead_of_downloading(node):
    uri = "s3://models-bucket/models/custom.h5"
    node.put(uri, b"h5")
    result = node.run("--weights-uri", uri)
    assert result.returncode == 0, result.stderr
    assert (node.home / "models" / "custom.h5").read_bytes() == b"h5"
    assert not _downloads(node)
    assert node.run("--weights-uri", uri).returncode == 0
    assert len(node.calls(f"aws s3 cp --only-show-errors {uri}")) == 1


def test_fails_when_installed_versions_differ_from_the_pins(node):
    result = node.run(FAKE_PIP_SED="s/^numpy==.*/numpy==1.0.0/")
    assert result.returncode != 0
    assert "missing: numpy==" in result.stderr and "pinned runtime not installed" in result.stderr


@pytest.mark.parametrize(
    "text",
    [
        b"numpy==2.4.6 --hash=sha256:" + b"a" * 64 + b"\npandas>=2\n",  # a range
        b"numpy==2.4.6\n",  # a pin without its wheel's hash
        b"numpy==2.4.6 \\\n    --hash=sha256:" + b"a" * 64 + b"\npandas==3.1.1\n",
    ],
)
def test_refuses_requirements_without_a_pin_and_a_hash(node, text):
    node.put(REQ_URI, text)
    result = node.run()
    assert result.returncode != 0 and "must be pinned with == and a --hash=sha256" in result.stderr
    assert not node.calls("python -m pip install")


def test_requires_the_requirements_argument(node):
    result = subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, env={"PATH": os.environ["PATH"]}
    )
    assert result.returncode != 0 and "--requirements" in result.stderr


@pytest.mark.skipif(
    shutil.which("shellcheck") is None, reason="shellcheck not installed (apt-get install shellcheck)"
)
def test_shellcheck_clean():
    result = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
