"""Access to the installed transformers version's own common test mixins, for `test_conformance.py`.

transformers does not ship its tests in the wheel. They are in the sdist of the same version, which is downloaded
with pip into a cache outside the repository at test time (never committed) and imported from there as a package.
The sdist's `tests/` folder lacks four helper modules that the common mixins import (the export and generation
mixins, the configuration kwargs list, the Hub fixture fetcher); small stand-ins for them are written beside it, each
saying what it replaces. Nothing of the mixins themselves is changed.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import transformers

VERSION = transformers.__version__
PACKAGE = "transformers_common_tests"
CACHE = Path(os.environ.get("MAGNET_TRANSFORMERS_TESTS", Path.home() / ".cache" / "magnet_hf" / "transformers-tests"))
ROOT = CACHE / VERSION

DOWNLOAD_COMMAND = (
    f"{sys.executable} -m pip download --no-deps --no-binary :all: transformers=={VERSION} -d <folder>"
)
HOW_TO_FIX = (
    f"the transformers {VERSION} sdist (which holds its common test mixins) could not be downloaded. Run "
    f"`{DOWNLOAD_COMMAND}` where the package index is reachable and set MAGNET_TRANSFORMERS_TESTS to a folder "
    f"holding `{VERSION}/transformers-{VERSION}.tar.gz` (or run the tests once with the index reachable)"
)

# Stand-ins for modules of transformers' repository that its sdist does not contain.
STAND_INS = {
    # ModelTesterMixin derives from ExportTesterMixin (torch.export tests, tests/exporters/): absent from the sdist,
    # so those tests cannot run; an empty base keeps the mixin importable.
    f"{PACKAGE}/exporters/__init__.py": "",
    f"{PACKAGE}/exporters/test_export.py": (
        '"""Stand-in: tests/exporters/test_export.py is not in the transformers sdist."""\n\n\n'
        "class ExportTesterMixin:\n    pass\n"
    ),
    # Only used in an issubclass check for generative models; MagNet does not generate.
    f"{PACKAGE}/generation/__init__.py": "",
    f"{PACKAGE}/generation/test_utils.py": (
        '"""Stand-in: tests/generation/test_utils.py is not in the transformers sdist."""\n\n\n'
        "class GenerationTesterMixin:\n    pass\n"
    ),
    # ConfigTester checks that each common PreTrainedConfig keyword is stored; the list is built here from
    # PreTrainedConfig's own keywords with non-default values.
    f"{PACKAGE}/utils/__init__.py": "",
    f"{PACKAGE}/utils/test_configuration_utils.py": (
        '"""Stand-in: tests/utils/test_configuration_utils.py is not in the transformers sdist."""\n\n'
        "config_common_kwargs = {\n"
        '    "return_dict": False,\n'
        '    "output_hidden_states": True,\n'
        '    "dtype": "float16",\n'
        '    "chunk_size_feed_forward": 5,\n'
        '    "architectures": ["BertModel"],\n'
        '    "id2label": {0: "label"},\n'
        '    "label2id": {"label": "0"},\n'
        '    "problem_type": "regression",\n'
        '    "tie_word_embeddings": False,\n'
        "}\n"
    ),
    # The image and processor mixins fetch Hub images through this helper; offline, a deterministic local image of
    # the same size (640x480) stands in for every URL.
    "utils/fetch_hub_objects_for_ci.py": (
        '"""Stand-in: utils/fetch_hub_objects_for_ci.py is not in the transformers sdist, and the Hub is offline."""\n\n'
        "import hashlib\nimport os\nimport tempfile\n\nimport numpy as np\n\n\n"
        "def url_to_local_path(url, return_url_if_not_found=True):\n"
        "    if not url.lower().endswith(('.jpg', '.jpeg', '.png')):\n"
        "        return url\n"
        "    from PIL import Image\n\n"
        "    seed = int(hashlib.sha256(url.encode()).hexdigest()[:8], 16)\n"
        "    path = os.path.join(tempfile.gettempdir(), f'magnet_hf_hub_stand_in_{seed}.png')\n"
        "    if not os.path.exists(path):\n"
        "        rng = np.random.default_rng(seed)\n"
        "        y, x = np.mgrid[0:480, 0:640]\n"
        "        smooth = np.stack([x * 255 // 639, y * 255 // 479, (x + y) * 255 // 1118], -1)\n"
        "        noise = rng.integers(0, 40, size=(480, 640, 3))\n"
        "        Image.fromarray(np.clip(smooth + noise, 0, 255).astype(np.uint8)).save(path)\n"
        "    return path\n"
    ),
}


class SuiteUnavailable(RuntimeError):
    """The transformers sdist cannot be obtained; the message says what to do."""


def _download(target: Path) -> Path:
    archive = target / f"transformers-{VERSION}.tar.gz"
    if archive.is_file():
        return archive
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target) as scratch:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet", f"transformers=={VERSION}", "-d", scratch,
        ]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise SuiteUnavailable(f"{HOW_TO_FIX} ({error})") from None
        downloaded = Path(scratch) / archive.name
        if result.returncode != 0 or not downloaded.is_file():
            last_line = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise SuiteUnavailable(f"{HOW_TO_FIX} (pip: {last_line})")
        os.replace(downloaded, archive)  # complete or absent, never half-written
    return archive


def _extract(archive: Path, target: Path) -> None:
    prefix = f"transformers-{VERSION}/tests/"
    with tempfile.TemporaryDirectory(dir=target) as scratch:
        package = Path(scratch) / PACKAGE
        package.mkdir()
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                name = member.name
                # Only the top-level test modules: the mixins live there.
                if member.isfile() and name.startswith(prefix) and "/" not in name[len(prefix):] and name.endswith(".py"):
                    source = tar.extractfile(member)
                    (package / name[len(prefix):]).write_bytes(source.read())
        (package / "__init__.py").touch()
        for relative, text in STAND_INS.items():
            path = Path(scratch) / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        for entry in (PACKAGE, "utils"):
            destination = target / entry
            if not destination.exists():
                os.replace(Path(scratch) / entry, destination)


def load(module: str):
    """Imports `transformers_common_tests.<module>` (e.g. `test_modeling_common`) from the cached sdist, downloading
    it first if needed. Raises `SuiteUnavailable` with instructions when it cannot be downloaded."""
    ROOT.mkdir(parents=True, exist_ok=True)
    if not (ROOT / PACKAGE / "__init__.py").is_file() or not (ROOT / "utils").is_dir():
        _extract(_download(ROOT), ROOT)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module(f"{PACKAGE}.{module}")
