"""notebooks/quickstart.ipynb runs top to bottom on the micro demo's run (nbclient, a real Jupyter kernel)."""

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def run_notebook(path: Path, cwd: Path) -> list[dict]:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return [c for c in nb.cells if c.cell_type == "code"]


@pytest.mark.heavy(later=True)
def test_quickstart_notebook_loads_inspects_encodes_and_rolls_out(micro_demo, tmp_path, monkeypatch):
    pytest.importorskip("nbclient")
    pytest.importorskip("treescope")
    out, _ = micro_demo
    monkeypatch.setenv("JASMINE_RUN", str(out / "dynamics"))  # the kernel inherits this process's environment
    monkeypatch.setenv("JASMINE_DATA", str(out / "data"))
    cells = run_notebook(NOTEBOOK, tmp_path)
    outputs = [o for c in cells for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "family maskgit" in text and "reconstruction PSNR" in text and "inferred actions of clip 0" in text
    assert any("text/html" in o.get("data", {}) for o in outputs), "treescope renders the model"
    assert any("image/png" in o.get("data", {}) for o in outputs), "the rollout plot"


def test_a_failing_cell_fails_the_notebook(tmp_path):
    pytest.importorskip("nbclient")
    import nbformat
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("raise ValueError('broken notebook')")])
    path = tmp_path / "bad.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(CellExecutionError, match="broken notebook"):
        run_notebook(path, tmp_path)
