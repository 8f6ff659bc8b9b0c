"""Commands answer `--help` and argument errors without loading torch; importing magnet_hf is cheap and still
registers everything with transformers before it is used."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import textwrap

import pytest

SOURCE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


def _run(arguments, **kwargs):
    env = {**os.environ, "PYTHONPATH": SOURCE}
    return subprocess.run([sys.executable, *arguments], capture_output=True, text=True, env=env, **kwargs)


def _imported_modules(importtime_log: str) -> set[str]:
    return {name for name in re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", importtime_log, flags=re.M)}


@pytest.mark.parametrize(
    "arguments, status",
    [
        (["--help"], 0),
        (["segment", "--help"], 0),
        (["demo", "--help"], 0),
        (["convert", "--help"], 0),
        (["evaluate", "--help"], 0),
        (["prepare-data", "--help"], 0),
        (["segmnt"], 2),
        (["demo", "--seed", "minus-one"], 2),
        (["convert", "--checkpoint"], 2),
        (["evaluate", "--bogus"], 2),
    ],
)
def test_help_and_argument_errors_import_no_torch(arguments, status):
    result = _run(["-X", "importtime", "-m", "magnet_hf.commands.magnet_hf_cli", *arguments])
    assert result.returncode == status, result.stderr[-2000:]
    modules = _imported_modules(result.stderr)
    assert {"magnet_hf", "magnet_hf.commands.arguments"} <= modules  # the log is the one of this command
    assert not {"torch", "transformers", "torchvision", "timm"} & modules
    assert ("usage:" in result.stdout) if status == 0 else ("usage:" in result.stderr or "error:" in result.stderr)


@pytest.mark.parametrize("transformers_first", [False, True])
def test_import_is_cheap_and_registration_happens_when_transformers_loads(transformers_first):
    script = textwrap.dedent(f"""
        import sys
        if {transformers_first}:
            from transformers import AutoModel
        import magnet_hf
        if not {transformers_first}:
            assert not {{"torch", "transformers"}} & set(sys.modules), "import magnet_hf loaded torch"
        from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageSegmentation, AutoProcessor
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING
        from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING
        from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_SEGMENTATION_MAPPING, MODEL_MAPPING
        from transformers.models.auto.processing_auto import PROCESSOR_MAPPING
        from transformers.pipelines import PIPELINE_REGISTRY
        from magnet_hf import modeling_magnet, configuration_magnet

        config = configuration_magnet.MagNetConfig
        assert CONFIG_MAPPING["magnet"] is config
        assert MODEL_MAPPING[config] is modeling_magnet.MagNetModel
        assert MODEL_FOR_IMAGE_SEGMENTATION_MAPPING[config] is modeling_magnet.MagNetForReferringSegmentation
        assert PROCESSOR_MAPPING[config] is magnet_hf.MagNetProcessor
        assert magnet_hf.MagNetImageProcessor in dict(IMAGE_PROCESSOR_MAPPING[config]).values()
        assert "referring-image-segmentation" in PIPELINE_REGISTRY.get_supported_tasks()
        assert (modeling_magnet.MagNetModel._auto_class, config._auto_class) == ("AutoModel", "AutoConfig")
        assert magnet_hf.MagNetProcessor._auto_class == "AutoProcessor"
        assert magnet_hf.MagNetImageProcessor._auto_class == "AutoImageProcessor"
        assert sorted(magnet_hf.__all__) == sorted(name for name in dir(magnet_hf) if name in magnet_hf.__all__)
        print("registered")
    """)
    result = _run(["-c", script])
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "registered"


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_command_progress_delays_bars_and_hides_them_off_a_terminal():
    from transformers.utils import logging as transformers_logging

    from magnet_hf.progress import PROGRESS_DELAY_SECONDS, command_progress

    transformers_logging.enable_progress_bar()
    with command_progress():
        on_terminal = transformers_logging.tqdm(range(3), desc="Loading weights", file=_Terminal())
        assert not on_terminal.disable and on_terminal.delay == PROGRESS_DELAY_SECONDS
        list(on_terminal)
        assert on_terminal.fp.getvalue() == ""  # a quick load never shows its bar
        assert transformers_logging.tqdm(range(3), desc="Loading weights", file=io.StringIO()).disable
    with command_progress(verbose=True):
        verbose = transformers_logging.tqdm(range(3), desc="Loading weights", file=io.StringIO())
        assert not verbose.disable and verbose.delay == 0
        list(verbose)
        assert "Loading weights" in verbose.fp.getvalue()
    after = transformers_logging.tqdm(range(3), file=io.StringIO())  # the hook is gone after the command
    assert not after.disable and after.delay == 0
    after.close()
