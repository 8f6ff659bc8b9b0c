"""The embedded demo model: shipped within the size budget, documented, and good enough for `magnet-hf demo`."""

from __future__ import annotations

import re
from pathlib import Path

from magnet_hf.commands.magnet_hf_cli import main
import magnet_hf
from magnet_hf.demo.segmentation import demo_model_path

#: Mean IoU that `magnet-hf demo` (default scenes) must print; README and model card state it (measured 0.645 over the
#: 16 expressions of 4 scenes).
DEMO_MEAN_IOU_FLOOR = 0.6
PACKAGE_BUDGET_BYTES = 25 * 1000 * 1000


def test_embedded_model_fits_the_package_budget_and_carries_its_card():
    folder = demo_model_path()
    assert sum(path.stat().st_size for path in folder.iterdir()) <= PACKAGE_BUDGET_BYTES
    card = (folder / "README.md").read_text()
    assert "knows synthetic scenes only" in card and "scripts/train.py" in card
    # The folder's remote code (for `pipeline(model=folder, trust_remote_code=True)` without magnet_hf) must be the
    # package's own modules, or the two ways of loading the same folder would run different code.
    copies = sorted(folder.glob("*.py"))
    assert {path.name for path in copies} >= {"modeling_magnet.py", "pipeline_magnet.py", "processing_magnet.py"}
    package = Path(magnet_hf.__file__).parent
    stale = [path.name for path in copies if path.read_bytes() != (package / path.name).read_bytes()]
    assert not stale, f"{stale} differ from the package's modules; run python scripts/refresh_demo_model_code.py"


def test_demo_with_the_embedded_model_prints_ious_above_the_stated_floor(tmp_path, capsys):
    from magnet_hf.data.synthetic import EXPRESSION_KINDS

    output = tmp_path / "demo"
    assert main(["demo", "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "embedded" in printed
    rows = re.findall(r"^the .+?\s+(attribute|relation|ordinal|superlative)\s+(\d\.\d{3})\s+\d\.\d{3}$", printed, flags=re.M)
    ious = [float(iou) for _, iou in rows]
    mean = float(re.search(r"^mean IoU\s+(\d\.\d{3})$", printed, flags=re.M).group(1))
    assert len(ious) >= 6 and {kind for kind, _ in rows} == set(EXPRESSION_KINDS)
    assert len(re.search(r"^Scenes: (.+)$", printed, flags=re.M).group(1).split(", ")) >= 2
    assert abs(mean - sum(ious) / len(ious)) < 1e-3
    assert mean >= DEMO_MEAN_IOU_FLOOR
    assert len(list(output.glob("*_overlay.png"))) == len(ious) and len(list(output.glob("*_mask.png"))) == len(ious)
    assert (output / "contact_sheet.png").is_file() and f"Open the contact sheet: {output / 'contact_sheet.png'}" in printed
