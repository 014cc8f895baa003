"""Check an mlxterp Neuronpedia export with SAEDashboard's own classes (docs/interop.md, "Neuronpedia").

Each batch-N.json must rebuild as SAEDashboard's NeuronpediaDashboardBatch (which refuses unknown
keys) and give back exactly the same JSON from its to_dict(), so every field is one SAEDashboard
writes, in its layout. Newer SAEDashboard releases also convert batches into Neuronpedia's import
layout (neuronpedia_export); where that exists it is run too.

Runs in a venv with SAEDashboard (its own dependencies are not needed for these classes):
    python -m venv /tmp/np && /tmp/np/bin/pip install numpy orjson && /tmp/np/bin/pip install --no-deps sae-dashboard
    mlxterp neuronpedia my_sae.mlx --out exports/np
    /tmp/np/bin/python scripts/check_neuronpedia_export.py exports/np
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path


def main(folder: Path) -> None:
    from sae_dashboard import __version__
    from sae_dashboard.neuronpedia.neuronpedia_dashboard import NeuronpediaDashboardBatch

    batches = sorted(folder.glob("batch-*.json"), key=lambda p: int(p.stem.split("-")[1]))
    if not batches:
        sys.exit(f"{folder} holds no batch-*.json files: write them with `mlxterp neuronpedia`")
    print(f"SAEDashboard {__version__}: {len(batches)} batch files in {folder}")
    n_features = n_activations = 0
    for path in batches:
        data = json.loads(path.read_text())
        rebuilt = NeuronpediaDashboardBatch(**data).to_dict()
        assert rebuilt == data, f"{path.name}: SAEDashboard's batch does not give back the same JSON"
        n_features += len(data["features"])
        n_activations += sum(len(f["activations"]) for f in data["features"])
    print(f"  every batch rebuilds as NeuronpediaDashboardBatch and round-trips exactly: {n_features} features, "
          f"{n_activations} activation records")
    try:
        from sae_dashboard.neuronpedia.neuronpedia_export import NeuronpediaExportConfig, export_neuronpedia_dashboards
    except ImportError:
        print("  (this SAEDashboard has no neuronpedia_export; the import-layout conversion was not run)")
        return
    head = json.loads(batches[0].read_text())
    with tempfile.TemporaryDirectory() as tmp:
        cfg = NeuronpediaExportConfig(
            saedashboard_output_dir=str(folder), exports_dir=tmp, creator_name="mlxterp", creator_id="mlxterp",
            release_id="mlxterp-check", release_title="mlxterp check", url="", model_name=head["model_id"],
            neuronpedia_source_set_id=head["sae_set"], neuronpedia_source_set_description="", hf_weights_repo_id="",
            hf_weights_path="", hook_point="", layer_num=head["layer"], prompts_huggingface_dataset_path="",
            n_prompts_total=0, n_tokens_in_prompt=0)
        out = Path(export_neuronpedia_dashboards(cfg))
        print(f"  converted to Neuronpedia's import layout: {sorted(p.name for p in out.rglob('*') if p.is_file())}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
